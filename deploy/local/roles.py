"""One Kafka principal per role on the secure local stack, and the ACLs that are all it may do.

Least privilege, from the roles table of ARCHITECTURE.md: a topic a role does not write it
cannot write, a group or transactional id outside its own prefix it cannot use. Credentials are
random per stack, one 0600 file per role under ``$ATLAS_HOME/secrets``; SCRAM users are created
through the admin API after the broker starts (only the admin is formatted in).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from schemas.secrets import ensure_secret
from schemas.topics import (
    ALERTS,
    CHECKPOINTS,
    DEADLETTER,
    FEEDBACK,
    INTERACTIONS,
    JOBS,
    MEMORY,
    PROMPTS,
    REWARDS,
    ROLLOUT_OBSERVATIONS,
    ROLLOUTS,
    TRIGGERS,
)

FOLLOWER_GROUPS = "atlas-follow-"  # followers of prompts/checkpoints (assign, never commit)


@dataclass(frozen=True)
class Role:
    writes: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    group_prefixes: tuple[str, ...] = ()
    transactional_prefixes: tuple[str, ...] = ()
    # topics under these prefixes it creates and owns (the reward stream's changelogs)
    owned_topic_prefixes: tuple[str, ...] = ()
    describe_configs: tuple[str, ...] = ()


SINK_TOPICS = (
    REWARDS, FEEDBACK, DEADLETTER, PROMPTS, CHECKPOINTS, TRIGGERS, JOBS, MEMORY, ROLLOUTS,
    ALERTS,
)  # fmt: skip

ROLES: dict[str, Role] = {
    "agent": Role(
        writes=(INTERACTIONS, FEEDBACK),
        reads=(PROMPTS, CHECKPOINTS, MEMORY),
        group_prefixes=(FOLLOWER_GROUPS,),
    ),
    "rewards": Role(
        writes=(REWARDS, TRIGGERS, DEADLETTER, MEMORY, ALERTS),
        # PROMPTS: each agent's RIM calibration (role rim, signed by the learner)
        reads=(INTERACTIONS, FEEDBACK, PROMPTS),
        group_prefixes=("atlas-rewards", FOLLOWER_GROUPS),
        # each worker's transactional producer (streams/engine.py)
        transactional_prefixes=("atlas-rewards-",),
        # its changelogs, the retrain policy's and alerts' observations, the memory's candidates
        owned_topic_prefixes=("atlas-rewards-",),
    ),
    "sink": Role(
        writes=(DEADLETTER,),  # an event the store refuses, isolated and dead-lettered
        reads=SINK_TOPICS,
        group_prefixes=("atlas-sink",),
        describe_configs=SINK_TOPICS,
    ),
    "learner": Role(
        # ROLLOUTS, DEADLETTER: the rollout controller (`atlas worker rollouts`) decides and
        # publishes as the learner; its bad observations are dead-lettered
        writes=(JOBS, PROMPTS, CHECKPOINTS, ROLLOUTS, DEADLETTER),
        # MEMORY: a prompt version is measured with the memory entries agents hold;
        # ROLLOUT_OBSERVATIONS: the reward stream's tasks in a rollout, for the controller
        reads=(TRIGGERS, JOBS, PROMPTS, CHECKPOINTS, MEMORY, ROLLOUT_OBSERVATIONS),
        group_prefixes=("atlas-gepa", "atlas-grpo", "atlas-rim", "atlas-rollouts", FOLLOWER_GROUPS),
        transactional_prefixes=(
            "atlas-gepa-",
            "atlas-grpo-",
            "atlas-rim-",
            "atlas-cli-",
            "atlas-rollouts-",
        ),
        owned_topic_prefixes=("atlas-rollouts-",),  # the controller's changelog
    ),
    "operator": Role(
        # MEMORY for `atlas memory forget`'s tombstones (wrong or private content); that one
        # topic only. An ACL cannot tell a tombstone from an entry: the CLI sends only those.
        writes=(TRIGGERS, MEMORY),
        reads=(JOBS, PROMPTS, CHECKPOINTS),
        group_prefixes=(FOLLOWER_GROUPS,),
    ),
}


ADMIN_ROLE = "admin"  # the stack's own super user: `atlas up`, topic creation, tests


def password_file(secrets_dir: Path, role: str) -> Path:
    if role != ADMIN_ROLE and role not in ROLES:
        raise ValueError(f"unknown Kafka role {role!r}: one of {', '.join([*ROLES, ADMIN_ROLE])}")
    return secrets_dir / f"kafka-{role}.password"


def create_principals(admin: object, secrets_dir: Path, timeout: float = 30.0) -> None:
    """Each role's SCRAM user (password from its 0600 file, made now if new) and its ACLs."""
    from confluent_kafka.admin import (
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    upserts = [
        UserScramCredentialUpsertion(
            role,
            ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
            ensure_secret(password_file(secrets_dir, role)).get_secret_value().encode(),
        )
        for role in ROLES
    ]
    for future in admin.alter_user_scram_credentials(upserts).values():  # type: ignore[attr-defined]
        future.result(timeout)
    for future in admin.create_acls(acl_bindings()).values():  # type: ignore[attr-defined]
        future.result(timeout)


def acl_bindings() -> list[object]:
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    def allow(
        kind: ResourceType,
        name: str,
        role: str,
        operation: AclOperation,
        pattern: ResourcePatternType = ResourcePatternType.LITERAL,
    ) -> AclBinding:
        return AclBinding(
            kind, name, pattern, f"User:{role}", "*", operation, AclPermissionType.ALLOW
        )

    prefixed = ResourcePatternType.PREFIXED
    bindings = []
    for name, role in ROLES.items():
        for topic in role.writes:
            bindings += [allow(ResourceType.TOPIC, topic, name, AclOperation.WRITE)]
            bindings += [allow(ResourceType.TOPIC, topic, name, AclOperation.DESCRIBE)]
        for topic in role.reads:
            bindings += [allow(ResourceType.TOPIC, topic, name, AclOperation.READ)]
        for topic in role.describe_configs:
            bindings += [allow(ResourceType.TOPIC, topic, name, AclOperation.DESCRIBE_CONFIGS)]
        for prefix in role.owned_topic_prefixes:
            bindings += [allow(ResourceType.TOPIC, prefix, name, AclOperation.ALL, prefixed)]
        for prefix in role.group_prefixes:
            bindings += [allow(ResourceType.GROUP, prefix, name, AclOperation.READ, prefixed)]
        for prefix in role.transactional_prefixes:
            for operation in (AclOperation.WRITE, AclOperation.DESCRIBE):
                bindings += [
                    allow(ResourceType.TRANSACTIONAL_ID, prefix, name, operation, prefixed)
                ]
    return bindings
