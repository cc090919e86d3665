"""Long evaluation steps say what they do: the plain bpb that `fit`'s quantization gap runs twice (minutes on a
CPU, right after "Hessians over N calibration batches") announces what it scores and logs its result."""

from __future__ import annotations

import logging
import re

from test_eval_support import small_eval_config, synthetic_luts, synthetic_val, tiny_model

from lit_golf.eval.config import EvalConfig
from lit_golf.eval.runner import plain_bpb


def test_plain_bpb_says_what_it_scores_and_its_result(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("lit_golf"), "propagate", True)  # the CLI's logger stops at its own handler
    tokens = synthetic_val([40, 70, 30])  # documents of 41, 71 and 31 tokens
    cfg = EvalConfig.from_dict({**small_eval_config().to_dict(), "max_tokens": 41 + 71 + 1})
    with caplog.at_level(logging.INFO, logger="lit_golf"):
        bpb = plain_bpb(tiny_model(), tokens, synthetic_luts(), cfg)
    records = {id(r): r for r in caplog.records}.values()  # once, whichever handlers pytest put on the logger
    started, done = [r.getMessage() for r in records if r.getMessage().startswith("evaluation plain:")]
    assert started == "evaluation plain: scoring 112 validation tokens in windows of 32 on cpu"  # the first two docs
    assert re.fullmatch(rf"evaluation plain: bpb {bpb:.5f} in \d+\.\ds", done), done
