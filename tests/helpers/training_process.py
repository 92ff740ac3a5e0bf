"""A training step in a process of its own, for tests that signal or race real processes:
`python -m tests.helpers.training_process STEP PAUSE_AT READY CONFIG_JSON DIRS_JSON`.
STEP is sft-stage1 or rl-stage3; CONFIG_JSON the demo preset's overrides, DIRS_JSON the step's folders.
PAUSE_AT >= 0: the step stops before the optimizer step after that global step (checkpoint-PAUSE_AT, when
due, is then saved and sealed), touches READY and waits there for a signal; -1: it runs to its end.
rl-stage3 trains on `graded_reward`: a random tiny model earns no SID reward, and GRPO with equal rewards
never changes a weight."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from transformers import Trainer

from sidreasoner import config
from sidreasoner.rl import reward


def graded_reward(kind: str = "rule", catalogue=None):
    """A stand-in for `reward.make_trl_reward`: the share of a completion's characters that are letters,
    which differs between the completions of a group, so every step changes the weights."""

    def letters_reward(completions, ground_truth, **kwargs) -> list[float]:
        texts = [reward.completion_text(c) for c in completions]
        return [sum(ch.isalpha() for ch in t) / max(len(t), 1) for t in texts]

    return letters_reward


def pause_after(step: int, ready: Path, wait_s: float = 300.0) -> None:
    training_step = Trainer.training_step

    def paused(self, *args, **kwargs):
        if self.state.global_step == step:
            ready.touch()
            time.sleep(wait_s)
            sys.exit(f"no signal came in {wait_s:g} s")
        return training_step(self, *args, **kwargs)

    Trainer.training_step = paused


def main(argv: list[str]) -> None:
    step, at, ready, overrides, dirs = argv
    cfg = config.load("demo", json.loads(overrides))
    folders = [Path(d) for d in json.loads(dirs)]
    if int(at) >= 0:
        pause_after(int(at), Path(ready))
    if step == "sft-stage1":
        from sidreasoner.train.sft import sft_stage1

        sft_stage1(cfg, *folders)
    else:
        from sidreasoner.rl.stage3 import rl_stage3

        reward.make_trl_reward = graded_reward
        rl_stage3(cfg, *folders)


if __name__ == "__main__":
    main(sys.argv[1:])
