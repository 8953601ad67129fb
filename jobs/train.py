"""spark-submit entry point: `spark-submit jobs/train.py --config conf/cluster.yaml [--set key=value ...]`."""

from _entry import submit

if __name__ == "__main__":
    submit("train")
