"""From run folders to a challenge submission: `submit` writes the records/ folder, `check` applies the rules.

Both read only the run folders' files (`results.json`, `config.yaml`, `train.log`, `train_gpt.py`, the
artifact's size), so they run without torch, and verify the numbers they sign against those files.
"""
