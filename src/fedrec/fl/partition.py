"""Who owns each parameter, declared as data.

Every parameter of a model gets exactly one role:

- ``frozen``: never trained, never sent (pre-trained layers, public item tables);
- ``private``: trained on the client and kept there, never uploaded;
- ``shared``: trained on clients, uploaded, aggregated by the server;
- ``group:<attr>``: shared among the clients with the same value of user
  attribute ``<attr>`` (one server copy per value).

A partition is written as ordered ``(glob pattern, role)`` rules; the first rule
that matches a parameter name decides its role, and a parameter no rule matches
is an error. "What to upload" is then a filter over this spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn

FROZEN, PRIVATE, SHARED = "frozen", "private", "shared"


def group_role(attr: str) -> str:
    """The role string of a group-shared parameter for user attribute ``attr``."""
    return f"group:{attr}"


@dataclass(frozen=True)
class Partition:
    """Parameter name -> role, resolved for one model."""

    roles: dict[str, str]

    @classmethod
    def from_rules(cls, model: nn.Module, rules: list[tuple[str, str]]) -> Partition:
        """Resolve ordered glob rules against ``model.named_parameters()``."""
        roles: dict[str, str] = {}
        for name, _ in model.named_parameters():
            role = next((r for pat, r in rules if fnmatchcase(name, pat)), None)
            if role is None:
                raise ValueError(f"parameter {name!r} matches no partition rule")
            if role not in (FROZEN, PRIVATE, SHARED) and not role.startswith("group:"):
                raise ValueError(f"unknown role {role!r} for {name!r}")
            roles[name] = role
        return cls(roles)

    def names(self, *roles: str) -> list[str]:
        """Parameter names with any of ``roles`` (``"group"`` matches every group)."""
        return [
            n
            for n, r in self.roles.items()
            if r in roles or ("group" in roles and r.startswith("group:"))
        ]

    @property
    def trainable(self) -> list[str]:
        """Everything that is not frozen, in model order."""
        return [n for n, r in self.roles.items() if r != FROZEN]

    @property
    def uploaded(self) -> list[str]:
        """Shared and group parameters: the only ones that leave a client."""
        return self.names(SHARED, "group")

    def group_attr(self, name: str) -> str | None:
        """The user attribute of a group parameter, else ``None``."""
        role = self.roles[name]
        return role.split(":", 1)[1] if role.startswith("group:") else None
