"""Start the trainer service: ``python -m services.trainer`` (settings from ``TRAINER_*``).

    TRAINER_API_KEY=secret TRAINER_REDIS_URL=redis://127.0.0.1:6379/0 python -m services.trainer
"""

from __future__ import annotations

from services.trainer.config import TrainerSettings
from services.trainer.jobs.app import build_app
from shared.config import hf_offline
from shared.service import serve


def main() -> None:
    hf_offline()
    settings = TrainerSettings()
    serve(build_app(settings), settings)


if __name__ == "__main__":
    main()
