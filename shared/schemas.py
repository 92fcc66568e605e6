"""Wire models of every searchlab API: the one source of truth for request/response shapes.

Contracts are in docs/design.md §3. A flag never changes a response's shape: the retriever always
returns ``score`` (Search-R1's ``return_scores=false`` used to drop it and break clients).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, model_validator

# --------------------------------------------------------------------------- errors


# --------------------------------------------------------------------------- limits
# HTTP request fields that are numbers or booleans are strict (``true`` is not 1, ``"3"`` is not 3): the
# schema says what is accepted and nothing else is.
# Upper bounds of every size a request can name (they show in each service's OpenAPI schema). A request over
# one is a 422 at the door, never an out-of-memory worker or a stalled event loop later.

MAX_TEXT_CHARS = 8_000  # a question, a prediction, one message's content
MAX_QUERY_CHARS = 2_000  # one search query (the retriever has its own, smaller setting)
MAX_GOLDS = 256  # gold answers per item (TriviaQA has up to 182 aliases)
MAX_GOLD_CHARS = 8_000  # one gold answer (FanOutQA: up to 4,703)
MAX_NEW_TOKENS = 4_096  # tokens generated per turn
MAX_TOTAL_TOKENS = 16_384  # an episode's response budget (policy + observation tokens)
MAX_OBS_TOKENS = 4_096  # one <information> block
MAX_TURNS = 16  # search turns of an episode
MAX_PROMPT_TOKENS = 32_768  # a pre-tokenized prompt
MAX_MESSAGES = 64  # messages of a pre-built prompt
MAX_TOPK = 50

Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Gold = Annotated[str, Field(max_length=MAX_GOLD_CHARS)]
Golds = Annotated[list[Gold], Field(max_length=MAX_GOLDS)]


class ErrorBody(BaseModel):
    code: str  # machine-readable, e.g. "invalid_request", "payload_too_large", "overloaded"
    message: str  # what is wrong, for a person


class ErrorResponse(BaseModel):
    error: ErrorBody


# --------------------------------------------------------------------------- common


class Info(BaseModel):
    """``GET /info``: what a service is running (free-form details per service)."""

    service: str
    version: str
    details: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------- retriever

SearchMode = Literal["dense", "bm25", "hybrid"]


class RetrieveRequest(BaseModel):
    """Search-R1 / verl ``SearchTool`` request; SkyRL's singular ``query`` is accepted too."""

    model_config = ConfigDict(extra="ignore")

    queries: Annotated[list[str], Field(max_length=4096)] | None = None  # the service's max_queries is lower
    query: str | None = None  # SkyRL
    topk: StrictInt | None = None  # None -> the service default
    return_scores: StrictBool = True  # accepted for compatibility; scores are always returned
    mode: SearchMode | None = None  # None -> the service default
    # simulator facade only: noise probability for this request (None -> its schedule)
    p_noise: StrictFloat | None = Field(default=None, ge=0.0, le=1.0)
    question: Text | None = None  # simulator facade only
    gold: Golds | None = None  # simulator facade only

    @model_validator(mode="after")
    def _one_of_query_queries(self) -> RetrieveRequest:
        if self.queries is None and self.query is None:
            raise ValueError("give 'queries' (a list of strings) or 'query' (a string)")
        if self.queries is not None and self.query is not None:
            raise ValueError("give either 'queries' or 'query', not both")
        return self

    def query_list(self) -> list[str]:
        return list(self.queries) if self.queries is not None else [self.query or ""]


class Document(BaseModel):
    id: str
    contents: str  # '"Title"\ntext', as FlashRAG / Search-R1 write it


class Hit(BaseModel):
    document: Document
    score: float


class RetrieveResponse(BaseModel):
    result: list[list[Hit]]


# --------------------------------------------------------------------------- judge

JudgeMethod = Literal["llm", "em", "f1", "acc", "cover_em", "recall"]


class JudgeItem(BaseModel):
    question: Text = ""
    gold: Golds = Field(min_length=1)
    prediction: Text


class JudgeRequest(BaseModel):
    items: list[JudgeItem] = Field(min_length=1, max_length=4096)  # the judge's max_items (256) is lower
    method: JudgeMethod = "llm"


class JudgeDetail(BaseModel):
    verdict: Literal["correct", "incorrect", "unparseable"] | None = None  # llm method only
    raw: str | None = None  # the judge model's raw output (llm method)
    cached: bool = False
    matched_gold: str | None = None  # rule methods: the gold answer that scored best


class JudgeResponse(BaseModel):
    scores: list[float]
    details: list[JudgeDetail]


# --------------------------------------------------------------------------- simulator

Quality = Literal["useful", "noisy"]


SimMode = Literal["llm", "corpus"]


class SimulateRequest(BaseModel):
    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    question: Text | None = None
    gold: Golds | None = None
    k: StrictInt = Field(default=5, ge=1, le=MAX_TOPK)  # the service refuses k above its max_k with 422
    quality: Quality = "useful"
    mode: SimMode | None = None  # None -> the service's mode; "corpus" needs its retriever


class SimDocument(BaseModel):
    title: str
    text: str


class SimulateResponse(BaseModel):
    documents: list[SimDocument]
    quality: Quality
    filled: int = 0  # documents that had to be filled in because generation gave too few
    mode: SimMode = "llm"  # which generator wrote them


class ScheduleUpdate(BaseModel):
    """``POST /schedule`` of the simulator: the trainer's current step (and optionally T)."""

    step: StrictInt = Field(ge=0)
    total_steps: StrictInt | None = Field(default=None, ge=1)


class ScheduleState(BaseModel):
    step: int
    total_steps: int
    p_noise: float  # the noise probability the /retrieve facade uses now
    start: float
    end: float
    base: float


# --------------------------------------------------------------------------- trainer jobs

JobKind = Literal["ramp", "coldstart", "sft", "rl", "distill", "simulator_sft", "eval"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]


class JobSubmit(BaseModel):
    kind: JobKind
    config: dict[str, Any] = Field(default_factory=dict)


class JobCreated(BaseModel):
    id: str


class ClusterJob(BaseModel):
    """A job's run on a Ray cluster (an ``rl`` job on the verl engine, through the Ray Jobs API)."""

    address: str  # the Ray Jobs API it was submitted to (the head's dashboard address)
    submission_id: str  # Ray's id of the job (``ray job status <id>``)
    status: str = "PENDING"  # Ray's: PENDING | RUNNING | STOPPED | SUCCEEDED | FAILED
    message: str = ""  # Ray's message about that status
    lines: int = 0  # driver log lines seen so far
    step: int = 0  # the last training step reported from its log
    log_tail: list[str] = Field(default_factory=list)  # its driver log's last lines (at most 100)


class JobStatus(BaseModel):
    id: str
    kind: JobKind
    state: JobState
    progress: float = 0.0  # 0..1
    step: int = 0
    metrics: dict[str, float] = Field(default_factory=dict)
    error: str | None = None
    created_at: float
    updated_at: float
    started_at: float | None = None  # when it began running (None: never ran)
    finished_at: float | None = None  # when it reached a final state
    artifacts: list[str] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    cluster: ClusterJob | None = None  # the job's run on a Ray cluster, if it has one


class JobList(BaseModel):
    jobs: list[JobStatus]


# --------------------------------------------------------------------------- episodes (docs/design.md §4)

EpisodeMethod = Literal["agent", "direct", "rag", "noop"]  # noop: an empty result at once (queue overhead)
SearchBackendName = Literal["retriever", "simulator", "none"]


class EpisodeSampling(BaseModel):
    max_new_tokens: int = Field(default=128, ge=1, le=MAX_NEW_TOKENS)  # per turn
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    # The answer turn (the environment opened the answer block: direct / rag, an agent's final turn, or its
    # one retry after an empty answer) may not end before this many non-blank tokens; 0 = off (RL).
    min_answer_tokens: int = Field(default=0, ge=0, le=MAX_NEW_TOKENS)


class EpisodeRewardSpec(BaseModel):
    metric: str = "f1"  # answer metric: em | acc | cover_em | f1 | recall | llm (the judge)
    format_weight: float = 0.0  # hybrid reward = format_weight * format + answer
    kind: str = "hybrid"  # reward function name in shared.rewards


class PolicyRef(BaseModel):
    """The policy an episode is generated with, named by the episode itself (no cluster-wide slot):
    two jobs running at once each get episodes from their own weights."""

    owner: str  # who publishes it: an RL job's id, an eval job's model under test, a distillation teacher
    version: int = Field(default=0, ge=0)  # moves each time the owner publishes new weights
    path: str  # the model folder (or embedded name) a worker loads; workers keep an LRU of loaded policies


class RemoteGeneration(BaseModel):
    """Where an episode is generated when it names its own rollout servers (verl's SGLang replicas)
    instead of a policy folder the worker loads: the worker sends token ids to ``POST /generate`` of one
    of ``base_urls`` (picked per episode, least loaded first, then kept for the episode's turns)."""

    base_urls: list[str] = Field(min_length=1)  # SGLang-compatible servers, e.g. http://10.0.0.5:30000
    tokenizer: str  # the servers' model (folder or name): its tokenizer encodes observations on the worker
    sampling: dict[str, Any] = Field(default_factory=dict)  # more SGLang sampling params (top_k, repetition_penalty)


class EpisodeRequest(BaseModel):
    """One trajectory to run, as queued on ``searchlab:episodes``."""

    job_id: str
    episode_id: str  # idempotency key: a re-run episode never yields two results
    group_id: str | None = None  # GRPO/DAPO group (same prompt, n samples)
    method: EpisodeMethod = "agent"  # agent loop | direct answer | RAG-PE (retrieve once)
    template: str = "search_r1"  # shared.protocol template name
    question: Text = ""
    messages: Annotated[list[dict[str, Text]], Field(max_length=MAX_MESSAGES)] | None = None  # a pre-built
    # prompt (e.g. RAMP); else built from question
    prompt_ids: Annotated[list[int], Field(max_length=MAX_PROMPT_TOKENS)] | None = None  # the prompt already
    # tokenized (verl's chat template); wins over messages
    ground_truth: Golds = Field(default_factory=list)
    policy: PolicyRef | None = None  # None: the worker's own configured model (WORKER_LLM__MODEL), version 0
    generation: RemoteGeneration | None = None  # set: generate on these servers (the policy is not loaded)
    search_backend: SearchBackendName = "retriever"
    p_noise: float | None = Field(default=None, ge=0.0, le=1.0)  # simulator: noisy-document probability
    topk: int = Field(default=3, ge=1, le=MAX_TOPK)
    sampling: EpisodeSampling = Field(default_factory=EpisodeSampling)
    max_turns: int = Field(default=4, ge=1, le=MAX_TURNS)  # search turns before a forced final answer
    max_total_tokens: int = Field(default=1024, ge=16, le=MAX_TOTAL_TOKENS)  # response budget (policy + obs tokens)
    obs_max_tokens: int = Field(default=256, ge=8, le=MAX_OBS_TOKENS)  # each <information> block is cut to this
    reward: EpisodeRewardSpec = Field(default_factory=EpisodeRewardSpec)
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def policy_version(self) -> int:
        return self.policy.version if self.policy is not None else 0


class EpisodeResult(BaseModel):
    """What a worker writes to the job's result stream for one episode."""

    job_id: str
    episode_id: str
    group_id: str | None = None
    policy_version: int = 0
    worker: str = ""
    prompt_ids: list[int] = Field(default_factory=list)
    response_ids: list[int] = Field(default_factory=list)  # policy and observation tokens, in order
    loss_mask: list[int] = Field(default_factory=list)  # 1 on policy tokens, 0 on observation tokens
    logprobs: list[float] = Field(default_factory=list)  # per response token; 0.0 on observation tokens
    text: str = ""  # the response as text
    answer: str | None = None
    reward: float = 0.0
    reward_parts: dict[str, float] = Field(default_factory=dict)
    scores: dict[str, float] = Field(default_factory=dict)  # em, acc, cover_em, f1, recall of the answer
    turns: int = 0
    searches: int = 0
    search_failures: int = 0
    finish_reason: str = ""  # answer | turn_limit | token_limit | error
    error: str | None = None
    elapsed_s: float = 0.0


# --------------------------------------------------------------------------- the trainer's dashboard

class JobPreset(BaseModel):
    """A ready-made job the dashboard offers (``GET /presets``): submit ``{kind, config}`` as is."""

    name: str
    title: str
    kind: JobKind
    config: dict[str, Any] = Field(default_factory=dict)
    doc: str = ""


class PresetList(BaseModel):
    presets: list[JobPreset]


class ServiceProbe(BaseModel):
    """One service as the trainer sees it: its ``/ready`` (or Redis's PING), with a short timeout."""

    name: str
    url: str
    ready: bool
    detail: str = ""  # "ready", or why not: "HTTP 503", "unreachable (ConnectError)" ...


class WorkerView(BaseModel):
    name: str
    policies: list[str] = Field(default_factory=list)  # loaded policies, "owner@vN"
    completed: int = 0  # episodes it finished
    seen_s: float = 0.0  # seconds since its last heartbeat


class QueueStats(BaseModel):
    waiting: int  # episodes no worker has claimed yet
    pending: int  # claimed, not finished (in flight)
    dead: int  # dead letters: episodes that failed every attempt


class ClusterView(BaseModel):
    """``GET /cluster``: what the dashboard's cluster panel shows."""

    services: list[ServiceProbe]  # the trainer, then every service it is configured with
    redis: ServiceProbe
    queue: QueueStats | None = None  # None while Redis is unreachable
    workers: list[WorkerView] = Field(default_factory=list)  # live ones (heartbeat within the visibility timeout)
