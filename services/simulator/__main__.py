"""Start the simulator service, or fine-tune its model.

    python -m services.simulator                      # serve (settings from SIMULATOR_* env)
    python -m services.simulator finetune --out DIR   # build data from real retrieval + SFT (see finetune.py)
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "finetune":
        from services.trainer.learn.simulator_sft import main as finetune_main

        finetune_main(argv[1:])
        return
    if argv:
        raise SystemExit(f"unknown command {argv[0]!r}; usage: python -m services.simulator [finetune ...]")
    from services.simulator.app import create_simulator_app
    from services.simulator.config import SimulatorSettings
    from shared.service import serve

    settings = SimulatorSettings()
    serve(create_simulator_app(settings), settings)


if __name__ == "__main__":
    main()
