"""Training scripts for the models shipped in :mod:`circuits.zoo`.

Each script is runnable as ``python -m circuits.zoo.train.<name> --out DIR --seed S`` and
writes a ``transformers`` model folder (``config.json``, ``model.safetensors``,
``tokenizer.json``, ``tokenizer_config.json``) plus ``training.json``.
"""
