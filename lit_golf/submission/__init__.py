"""From run folders to a challenge submission: `submit` writes the records/ folder, `check` applies the rules.

Both read only what the runs recorded (`results.json`, `config.yaml`, `train.log`, `train_gpt.py`), so
they run without torch.
"""
