"""Typed configs of the job kinds that wrap a pipeline (validated at ``POST /jobs``: a bad field is a 422).

The ``sft`` kind uses its pipeline's own config as is (:class:`~services.trainer.learn.sft.SFTConfig`);
``rl`` adds the training engine to :class:`~services.trainer.learn.rl.RLConfig`, ``distill`` the
self-distillation rounds to :class:`~services.trainer.learn.distill.DistillConfig`; the others here add what
a job fills in from the trainer's settings (service URLs) or from its folder.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from services.trainer.data.coldstart import ColdStartConfig
from services.trainer.eval.harness import EvalConfig, parse_method
from services.trainer.learn.distill import DistillConfig
from services.trainer.learn.rl import RLConfig
from services.trainer.learn.sft import SFTSpec
from services.trainer.learn.simulator_sft import FinetuneConfig
from shared.confine import ModelRef, ServiceURL, check_model_ref, check_remote_model, readable_source
from shared.data import DATASETS, canonical_name

EvalSource = Annotated[str, AfterValidator(readable_source)]  # a dataset name, or a QA file this trainer may read


class RLJobConfig(RLConfig):
    """An ``rl`` job on either training engine (an unknown engine is a 422, never ignored).

    ``local``: PyTorch in the trainer, episodes on the queue (every other field). ``verl``: a verl run, from
    ``model`` and ``verl`` (:class:`~services.trainer.verl.run.VerlConfig` fields: recipe, dispatch, sizes;
    service URLs default to the trainer's), prepared and validated in the job folder (``verl/``, the same
    directory ``searchlab train --engine verl`` writes) with its command recorded, then launched on the
    trainer's Ray cluster (``TRAINER_RAY_ADDRESS``) and followed there (:mod:`services.trainer.jobs.cluster`)."""

    engine: Literal["local", "verl"] = "local"
    model: str = "smollm2"  # local: a ModelRef (embedded name or folder); verl: also a hub id the cluster loads
    verl: dict[str, Any] = Field(default_factory=dict)  # engine "verl": VerlConfig fields (checked at submission)
    # engine "verl": "auto" launches on the trainer's Ray cluster when it has one (TRAINER_RAY_ADDRESS), "ray"
    # requires one, "none" only prepares and validates the run
    launch: Literal["auto", "ray", "none"] = "auto"
    # on Ray: the cluster waits for the services, prepares and validates the run, and stops there (no GPU)
    prepare_only: bool = False

    @model_validator(mode="after")
    def _verl_fields(self, info: ValidationInfo) -> RLJobConfig:
        if self.verl and self.engine != "verl":
            raise ValueError("'verl' settings need engine 'verl'")
        if (self.launch != "auto" or self.prepare_only) and self.engine != "verl":
            raise ValueError("'launch' and 'prepare_only' are settings of engine 'verl'")
        if self.engine == "verl":
            from services.trainer.verl.config import VerlConfig

            check_remote_model(self.model, info)
            # a bad field is a 422 here, with the same confinement as the job's own fields
            VerlConfig.model_validate({"model_path": self.model, **self.verl}, context=info.context)
        else:
            check_model_ref(self.model, info)
        return self


class ColdStartJobConfig(ColdStartConfig):
    """A ``coldstart`` job: the retriever's and judge's bearer tokens are the trainer's (``TRAINER_<SERVICE>_API_KEY``,
    else ``TRAINER_SERVICE_API_KEY``), the agents' LLM's is ``TRAINER_LLM_API_KEY``, read when the job runs; a
    config never carries a secret (it is stored and shown in ``GET /jobs``). Method ``agents``: the LLM and
    the judge default to the trainer's ``TRAINER_LLM_URL`` and ``TRAINER_JUDGE_URL``."""

    retriever_url: ServiceURL | None = None  # type: ignore[assignment]  # None: the trainer's TRAINER_RETRIEVER_URL
    api_key: SecretStr | None = Field(default=None, exclude=True)  # refused: see _no_secret
    llm_api_key: SecretStr | None = Field(default=None, exclude=True)  # refused: TRAINER_LLM_API_KEY is sent
    judge_api_key: SecretStr | None = Field(default=None, exclude=True)  # refused: the trainer's judge key is sent

    @field_validator("api_key", "llm_api_key", "judge_api_key")
    @classmethod
    def _no_secret(cls, v: Any) -> None:
        if v is not None:
            raise ValueError("a job config carries no secret: the trainer sends its own keys "
                             "(TRAINER_<SERVICE>_API_KEY, else TRAINER_SERVICE_API_KEY) to the services")
        return None


class EvalJobConfig(BaseModel):
    """An ``eval`` job: methods side by side on QA data (names -> their eval part; paths -> whole file)."""

    datasets: list[EvalSource] = Field(default_factory=lambda: ["hotpotqa"], min_length=1, max_length=32)
    methods: list[str] = Field(default_factory=lambda: ["direct", "rag", "agent"], min_length=1, max_length=32)
    n: int | None = Field(default=200, ge=1, le=1_000_000)  # first n questions of each dataset (None: all)
    model: ModelRef = "smollm2"  # the model direct / rag / agent run with (every episode names it; workers load it)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str], info: ValidationInfo) -> list[str]:
        for m in v:
            _, folder = parse_method(m)
            if folder is not None:
                check_model_ref(folder, info)  # policy:<checkpoint>: a model folder this trainer may read
        return v


class SimulatorSFTJobConfig(BaseModel):
    """A ``simulator_sft`` job: examples from real retrieval, then SFT of the simulator model."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is a 422, not a silent default

    dataset: str = "hotpotqa"  # QA set whose *train* part gives the questions
    limit: int = Field(default=100, ge=1, le=1_000_000)  # questions
    k: int = Field(default=5, ge=1, le=20)  # documents per set
    sets_per_query: int = Field(default=2, ge=1, le=16)  # document sets per question: ranks 1..k, k+1..2k, ...
    words: int = Field(default=30, ge=4, le=2000)  # words per document (passages are cut to it; the prompt names it)
    base_model: ModelRef = "smollm2"  # embedded name or a model folder to fine-tune
    label: Literal["judge", "metric"] | None = None  # useful/noisy by; None: judge if TRAINER_JUDGE_URL, else metric
    retriever_url: ServiceURL | None = None  # None: the trainer's TRAINER_RETRIEVER_URL
    epochs: int = Field(default=1, ge=1, le=1000)  # passes over the examples
    lr: float = Field(default=5e-5, gt=0.0, le=1.0)  # AdamW peak learning rate
    batch_size: int = Field(default=4, ge=1, le=1024)  # examples per optimizer step
    max_len: int = Field(default=768, ge=64, le=32_768)  # prompt + target tokens
    bf16: bool = True  # bf16 autocast on CPU
    seed: int = 0

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        try:
            return canonical_name(v)
        except ValueError:
            raise ValueError(f"unknown dataset '{v}'; valid: {', '.join(DATASETS)}") from None

    def finetune_config(self) -> FinetuneConfig:
        return FinetuneConfig(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, max_len=self.max_len,
                              bf16=self.bf16, seed=self.seed, words=self.words)


class RoundEval(BaseModel):
    """The fixed evaluation after each self-distillation round: the round's checkpoint as ``policy:<ckpt>``
    on the same questions every round (a name's ``eval`` part), so the rows compare."""

    model_config = ConfigDict(extra="forbid")

    datasets: list[EvalSource] = Field(default_factory=lambda: ["hotpotqa"], min_length=1, max_length=8)
    n: int = Field(default=50, ge=1, le=100_000)  # first n questions of each dataset
    config: EvalConfig = Field(default_factory=EvalConfig)  # episode settings (the stamp is the round's)


class DistillJobConfig(DistillConfig):
    """A ``distill`` job; ``rounds: K > 1`` is MaskSearch's self-distillation
    (:mod:`services.trainer.jobs.distill_rounds`): round k distills ``n`` fresh prompts (the k-th slice of the
    source) with round k-1's SFT checkpoint as the teacher (round 1: ``teacher``), SFTs ``student`` on every
    round's accepted records so far and evaluates the checkpoint. ``rounds: 1`` is one distillation, as before."""

    rounds: int = Field(default=1, ge=1, le=16)  # distill -> SFT -> eval rounds (1: distillation only)
    student: ModelRef | None = None  # each round's SFT starts from it (None: the round-1 teacher)
    sft: SFTSpec = Field(default_factory=lambda: SFTSpec(max_steps=50))  # each round's SFT (rounds > 1)
    eval: RoundEval = Field(default_factory=RoundEval)  # each round's evaluation (rounds > 1)

    @model_validator(mode="after")
    def _rounds_fields(self) -> DistillJobConfig:
        # a stored config holds every default (it is dumped whole), so what counts is a value other than those
        defaults = DistillJobConfig.model_construct()
        skip = {"config": {"stamp"}}
        changed = (self.student is not None or self.sft != defaults.sft
                   or self.eval.model_dump(exclude=skip) != defaults.eval.model_dump(exclude=skip))
        if self.rounds == 1 and changed:
            raise ValueError("'student', 'sft' and 'eval' are settings of self-distillation rounds: set rounds > 1")
        return self
