"""GraphGPT2-Rec training, evaluation, recommendation and publishing (see docs/training.md).

Entry points: ``graphgpt2-rec`` (train.main:cli), ``train.main.run_pipeline(cfg)``, ``train.config.load_config``,
and the stage scripts ``train/pretrain.py``, ``train/finetune.py``, ``train/evaluate.py``, ``python -m
train.recommend``, ``python -m train.publish``.
"""
