"""spark-submit entry point: `spark-submit jobs/fit.py --config conf/cluster.yaml [--set key=value ...]`."""

from _entry import submit

if __name__ == "__main__":
    submit("fit")
