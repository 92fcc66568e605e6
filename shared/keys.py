"""Which bearer token a client sends to which searchlab service.

A cluster may key all four services alike (one secret, as docker-compose and k8s do by default) or each
on its own (``searchlab up``: four independent random keys, so a key taken from one service opens no
other). :class:`ServiceKeys` holds either: a key per service, and a ``default`` sent to every service
that has none of its own. Every client side reads it the same way: the settings of the simulator,
workers, trainer and verl loop build one (their ``<PREFIX>_<SERVICE>_API_KEY`` fields over their single
fallback key), the local cluster's state file stores one, and the notebook SDK takes one.

    keys = ServiceKeys.coerce({"retriever": "k1", "judge": "k2"})   # or one str for all, or None
    keys.of("retriever")   # "k1"; keys.of("trainer") -> None (no key of its own, no default)

Keys are :class:`~pydantic.SecretStr`: a repr, a log line or ``model_dump()`` shows ``**********``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

Service = Literal["retriever", "judge", "simulator", "trainer"]
SERVICES: tuple[Service, ...] = get_args(Service)


def _value(key: SecretStr | None) -> str | None:
    """The key in clear; an empty key is no key."""
    return (key.get_secret_value() or None) if key is not None else None


class ServiceKeys(BaseModel):
    """The bearer token for each service: its own where set, else ``default``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default: SecretStr | None = None  # sent to any service without a key of its own (one key for the cluster)
    retriever: SecretStr | None = None  # the retriever's RETRIEVER_API_KEY
    judge: SecretStr | None = None  # the judge's JUDGE_API_KEY
    simulator: SecretStr | None = None  # the simulator's SIMULATOR_API_KEY
    trainer: SecretStr | None = None  # the trainer's TRAINER_API_KEY

    def of(self, service: Service) -> str | None:
        """The key to send to ``service``: its own, else the default, else None (send none)."""
        return _value(getattr(self, service)) or _value(self.default)

    def fallback(self) -> str | None:
        """The default key alone (what a server that is none of the four, e.g. a rollout server, is sent)."""
        return _value(self.default)

    def over(self, other: ServiceKeys) -> ServiceKeys:
        """These keys where set (a service's own, else this default), ``other``'s for the rest."""
        own = {s: self.of(s) or other.of(s) for s in SERVICES}
        default = self.fallback() or other.fallback()
        return ServiceKeys.model_validate({"default": default, **own})

    def reveal(self) -> dict[str, str]:
        """Service name -> key in clear, for every service that gets one: for the 0600 state file and a child
        process's environment only, never for a log."""
        return {s: key for s in SERVICES if (key := self.of(s))}

    @classmethod
    def generate(cls) -> ServiceKeys:
        """A new random key per service, independent of each other."""
        return cls.model_validate({s: secrets.token_urlsafe(32) for s in SERVICES})

    @classmethod
    def coerce(cls, keys: ServiceKeys | str | Mapping[str, str] | None) -> ServiceKeys:
        """``None``: no keys; a str: that key for every service; a mapping: service name -> key (``"default"``
        for the rest); a ServiceKeys as it is. An unknown service name raises ``ValueError``."""
        if keys is None:
            return cls()
        if isinstance(keys, ServiceKeys):
            return keys
        if isinstance(keys, str):
            return cls(default=SecretStr(keys))
        unknown = set(keys) - {*SERVICES, "default"}
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)} in the keys; valid: {', '.join(SERVICES)}, default")
        return cls.model_validate(dict(keys))


class ClientKeyEnv(BaseSettings):
    """The keys a client process finds in its environment (env prefix ``SEARCHLAB_``): the notebook SDK's
    ``Cluster.local()``, ``searchlab train`` / ``demo``, and the processes of a verl run."""

    model_config = SettingsConfigDict(env_prefix="SEARCHLAB_", extra="ignore")

    api_key: SecretStr | None = None  # SEARCHLAB_API_KEY: sent to every service without a key below
    retriever_api_key: SecretStr | None = None  # SEARCHLAB_RETRIEVER_API_KEY
    judge_api_key: SecretStr | None = None  # SEARCHLAB_JUDGE_API_KEY
    simulator_api_key: SecretStr | None = None  # SEARCHLAB_SIMULATOR_API_KEY
    trainer_api_key: SecretStr | None = None  # SEARCHLAB_TRAINER_API_KEY

    def keys(self) -> ServiceKeys:
        return ServiceKeys(default=self.api_key, retriever=self.retriever_api_key, judge=self.judge_api_key,
                           simulator=self.simulator_api_key, trainer=self.trainer_api_key)


def key_env(keys: ServiceKeys, prefix: str = "SEARCHLAB_") -> dict[str, str]:
    """``keys`` as the environment :class:`ClientKeyEnv` reads (``<prefix><SERVICE>_API_KEY``, and
    ``<prefix>API_KEY`` for the default): what a child process (a Ray job) is handed."""
    own = {f"{prefix}{s.upper()}_API_KEY": _value(getattr(keys, s)) for s in SERVICES}
    return {name: key for name, key in {**own, f"{prefix}API_KEY": keys.fallback()}.items() if key}
