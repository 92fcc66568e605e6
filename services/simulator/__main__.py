"""Start the simulator service: ``python -m services.simulator`` (settings from ``SIMULATOR_*`` env).

Fine-tuning the simulator's model is training work and lives with the trainer:
``searchlab simulator finetune ...`` (:mod:`services.trainer.learn.simulator_sft`) or the trainer's
``simulator_sft`` job kind.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv:
        raise SystemExit(f"unknown argument {argv[0]!r}: python -m services.simulator takes none "
                         "(fine-tune the simulator with `searchlab simulator finetune`)")
    from services.simulator.app import create_simulator_app
    from services.simulator.config import SimulatorSettings
    from shared.service import serve

    settings = SimulatorSettings()
    serve(create_simulator_app(settings), settings)


if __name__ == "__main__":
    main()
