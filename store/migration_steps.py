"""The store's schema: every migration, in order, as written for a single ClickHouse server.

Every table is a ReplacingMergeTree keyed so that replaying an insert converges to one row,
and carries ``non_replicated_deduplication_window`` so an insert retried with the same
``insert_deduplication_token`` is dropped at once. ORDER BY keys start with the agent and the
hour, which every monitoring query filters and groups on. ``store/ddl.py`` renders the same
statements for a cluster (replicated local tables, Distributed tables under the same names);
``store/migrations.py`` applies them.
"""

from __future__ import annotations

from schemas.models import Instant, Lineage
from store.ddl import DEDUP, Migration

# The column type of each annotation a Lineage field has (all optional: Nullable).
COLUMN_TYPES: dict[object, str] = {
    str | None: "Nullable(String)",
    Instant | None: "Nullable(DateTime64(3, 'UTC'))",
    float | None: "Nullable(Float64)",
}


def lineage_columns() -> list[tuple[str, str]]:
    """(name, type) of the lineage columns, in the order of ``Lineage``'s fields."""
    return [(name, COLUMN_TYPES[f.annotation]) for name, f in Lineage.model_fields.items()]


# Migration 1 creates prompt_versions and checkpoints with these and never runs again on a
# store that has run it: a field added to Lineage also needs a migration adding its column
# (ADD COLUMN IF NOT EXISTS, which a new store, given the column here, passes over).
LINEAGE_COLUMNS = ",\n                ".join(f"{n} {t}" for n, t in lineage_columns())


LATEST_TRACES = (
    "SELECT * FROM scored_traces FINAL ORDER BY trace_id, revision DESC LIMIT 1 BY trace_id"
)
# The entries agents hold now: each key's latest row, unless it is a tombstone's.
MEMORY_CURRENT = "SELECT * FROM memory_entries FINAL WHERE NOT deleted"


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "core tables",
        (
            f"""
            CREATE TABLE IF NOT EXISTS scored_traces (
                trace_id String,
                revision UInt32,
                agent_id LowCardinality(String),
                created_at DateTime64(3, 'UTC'),
                scored_at DateTime64(3, 'UTC'),
                task_id String,
                task_family LowCardinality(String),
                task_input String,
                reference Nullable(String),
                mode LowCardinality(String),
                prompt_versions Map(String, Int32),
                models Map(String, String),
                steps_json String,
                final_answer String,
                baseline_answer Nullable(String),
                reward Float64,
                baseline_reward Nullable(Float64),
                human_score Nullable(Float64),
                uncertainty Float64,
                escalated Bool,
                rationale String,
                feedback_count UInt32,
                errors Array(String),
                prompt_tokens UInt64,
                completion_tokens UInt64,
                latency_ms Float64,
                metadata Map(String, String)
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(created_at)
            ORDER BY (agent_id, toStartOfHour(created_at), trace_id, revision)
            {DEDUP}
            """,
            f"""
            CREATE TABLE IF NOT EXISTS judge_scores (
                trace_id String,
                revision UInt32,
                agent_id LowCardinality(String),
                created_at DateTime64(3, 'UTC'),
                judge LowCardinality(String),
                score Nullable(Float64),
                uncertainty Nullable(Float64),
                escalated Bool,
                samples UInt16,
                error Nullable(String),
                rationale String
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(created_at)
            ORDER BY (agent_id, judge, toStartOfHour(created_at), trace_id, revision)
            {DEDUP}
            """,
            f"""
            CREATE TABLE IF NOT EXISTS feedback (
                event_id String,
                trace_id String,
                agent_id LowCardinality(String),
                created_at DateTime64(3, 'UTC'),
                kind LowCardinality(String),
                edited_text Nullable(String),
                rating Nullable(Float64),
                rating_min Float64,
                rating_max Float64,
                tool_name Nullable(String),
                tool_success Nullable(Bool),
                user_id Nullable(String),
                comment Nullable(String)
            ) ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(created_at)
            ORDER BY (agent_id, trace_id, event_id)
            {DEDUP}
            """,
            f"""
            CREATE TABLE IF NOT EXISTS prompt_versions (
                agent_id LowCardinality(String),
                role LowCardinality(String),
                version Int32,
                parent_version Nullable(Int32),
                text String,
                source LowCardinality(String),
                created_at DateTime64(3, 'UTC'),
                {LINEAGE_COLUMNS}
            ) ENGINE = ReplacingMergeTree
            ORDER BY (agent_id, role, version)
            {DEDUP}
            """,
            f"""
            CREATE TABLE IF NOT EXISTS checkpoints (
                agent_id LowCardinality(String),
                role LowCardinality(String),
                version Int32,
                parent_version Nullable(Int32),
                uri String,
                base_model String,
                sha256 Map(String, String),
                source LowCardinality(String),
                created_at DateTime64(3, 'UTC'),
                {LINEAGE_COLUMNS}
            ) ENGINE = ReplacingMergeTree
            ORDER BY (agent_id, role, version)
            {DEDUP}
            """,
            f"""
            CREATE TABLE IF NOT EXISTS triggers (
                trigger_id String,
                kind LowCardinality(String),
                agent_id LowCardinality(String),
                reason String,
                requested_by Nullable(String),
                created_at DateTime64(3, 'UTC'),
                window_start Nullable(DateTime64(3, 'UTC')),
                window_end Nullable(DateTime64(3, 'UTC')),
                budget Nullable(Int32),
                params Map(String, String)
            ) ENGINE = ReplacingMergeTree
            ORDER BY (agent_id, trigger_id)
            {DEDUP}
            """,
            f"""
            CREATE TABLE IF NOT EXISTS jobs (
                job_id String,
                trigger_id String,
                kind LowCardinality(String),
                agent_id LowCardinality(String),
                state LowCardinality(String),
                seq UInt32,
                updated_at DateTime64(3, 'UTC'),
                progress Nullable(Float64),
                message String,
                metrics Map(String, Float64),
                result_version Nullable(Int32),
                worker Nullable(String)
            ) ENGINE = ReplacingMergeTree
            ORDER BY (job_id, seq)
            {DEDUP}
            """,
            f"""
            CREATE TABLE IF NOT EXISTS dead_letters (
                source_topic LowCardinality(String),
                source_partition Int32,
                source_offset Int64,
                key Nullable(String),
                original String,
                reason String,
                error_type LowCardinality(String),
                processor LowCardinality(String),
                failed_at DateTime64(3, 'UTC')
            ) ENGINE = ReplacingMergeTree
            ORDER BY (source_topic, source_partition, source_offset, processor)
            {DEDUP}
            """,
            f"CREATE VIEW IF NOT EXISTS latest_traces AS {LATEST_TRACES}",
        ),
    ),
    Migration(
        2,
        "scored_traces.event_id, so a stored trace can be re-sent as the same interaction",
        (
            "ALTER TABLE scored_traces ADD COLUMN IF NOT EXISTS event_id String DEFAULT ''",
            # A view's `*` is expanded when it is created: create it again to see the column.
            f"CREATE OR REPLACE VIEW latest_traces AS {LATEST_TRACES}",
        ),
    ),
    Migration(
        3,
        "prompt_versions.demonstrations: solved examples published with a prompt",
        (
            "ALTER TABLE prompt_versions ADD COLUMN IF NOT EXISTS"
            " demonstrations Array(Tuple(input String, output String))",
        ),
    ),
    Migration(
        4,
        "scored_traces.stored_at: when the sink inserted the row, so event -> stored latency"
        " is a query, not a poll (NULL for rows stored before: their time is unknown)",
        (
            # No DEFAULT: ClickHouse computes a default for old parts when they are read, so
            # old rows would show the time of every query.
            "ALTER TABLE scored_traces ADD COLUMN IF NOT EXISTS"
            " stored_at Nullable(DateTime64(3, 'UTC'))",
            f"CREATE OR REPLACE VIEW latest_traces AS {LATEST_TRACES}",
        ),
    ),
    Migration(
        5,
        "memory_entries: atlas.memory.v1 for monitoring, tombstones as deleted rows",
        (
            # One row per message of the compacted topic; the row with the highest version (the
            # message's Kafka timestamp, which follows the topic's order) is the entry's state.
            # Read it with FINAL and `WHERE NOT deleted`: a tombstone shows as deleted = 1.
            f"""
            CREATE TABLE IF NOT EXISTS memory_entries (
                agent_id String,
                role LowCardinality(String),
                entry_id String,
                input String,
                output String,
                source LowCardinality(String),
                source_trace_id String,
                reward Float64,
                terms Array(String),
                created_at DateTime64(3, 'UTC'),
                deleted UInt8,
                version DateTime64(3, 'UTC')
            ) ENGINE = ReplacingMergeTree(version)
            ORDER BY (agent_id, role, entry_id)
            {DEDUP}
            """,
            f"CREATE VIEW IF NOT EXISTS memory_current AS {MEMORY_CURRENT}",
        ),
    ),
    Migration(
        6,
        "scored_traces.memory_entries: the memory entries the agent was shown for the task,"
        " so each entry's effect on reward is a query (empty for rows stored before)",
        (
            "ALTER TABLE scored_traces ADD COLUMN IF NOT EXISTS memory_entries Array(String)",
            f"CREATE OR REPLACE VIEW latest_traces AS {LATEST_TRACES}",
        ),
    ),
)

# Migration 7's memory_current: retired entries are no longer current either.
MEMORY_CURRENT_V7 = (
    "SELECT * FROM memory_entries FINAL WHERE NOT deleted AND retired_reason IS NULL"
)

MIGRATIONS += (
    Migration(
        7,
        "memory_entries: retirement and its figures (MemoryEntry v2); memory_current without"
        " retired entries (rows stored before are not retired)",
        (
            "ALTER TABLE memory_entries"
            " ADD COLUMN IF NOT EXISTS retired_reason Nullable(String),"
            " ADD COLUMN IF NOT EXISTS uses Int64 DEFAULT 0,"
            " ADD COLUMN IF NOT EXISTS reward_when_used Nullable(Float64),"
            " ADD COLUMN IF NOT EXISTS reward_when_not_used Nullable(Float64)",
            f"CREATE OR REPLACE VIEW memory_current AS {MEMORY_CURRENT_V7}",
        ),
    ),
    Migration(
        8,
        "prompt_versions.memory: the student's memory policy, a component of its prompt"
        " version (rows stored before read as the default policy, as their events do)",
        (
            "ALTER TABLE prompt_versions ADD COLUMN IF NOT EXISTS memory"
            " Tuple(enabled Bool, k Int32, token_budget Int32, min_score Float64)"
            " DEFAULT tuple(false, 3, 512, 0.)",
        ),
    ),
    Migration(
        9,
        "scored_traces.memory_held_back: the entries that matched the task but the randomized"
        " holdout kept from it (InteractionEvent v3), so an entry's effect is shown minus held"
        " back on similar tasks (empty for rows stored before)",
        (
            "ALTER TABLE scored_traces ADD COLUMN IF NOT EXISTS memory_held_back Array(String)",
            f"CREATE OR REPLACE VIEW latest_traces AS {LATEST_TRACES}",
        ),
    ),
    Migration(
        10,
        "labels and canary rollouts: prompt_versions.label, rollout_id, traffic_share (the label"
        " of the version's latest publication, PromptVersion v4); scored_traces.rollouts (each"
        " task's arm and versions, InteractionEvent v3); rows stored before are production and"
        " in no rollout",
        (
            "ALTER TABLE prompt_versions"
            " ADD COLUMN IF NOT EXISTS label LowCardinality(String) DEFAULT 'production',"
            " ADD COLUMN IF NOT EXISTS rollout_id Nullable(String),"
            " ADD COLUMN IF NOT EXISTS traffic_share Nullable(Float64)",
            "ALTER TABLE scored_traces ADD COLUMN IF NOT EXISTS rollouts Array(Tuple(role String,"
            " rollout_id String, arm LowCardinality(String), canary_version Int32,"
            " production_version Int32))",
            f"CREATE OR REPLACE VIEW latest_traces AS {LATEST_TRACES}",
        ),
    ),
    Migration(
        11,
        "alerts: every alert event (io.atlas_stream.Alert) by agent, kind and episode; an"
        " episode's resolved row replaces its firing row (version updated_at)",
        (
            f"""
            CREATE TABLE IF NOT EXISTS alerts (
                alert_id String,
                agent_id LowCardinality(String),
                kind LowCardinality(String),
                state LowCardinality(String),
                fired_at DateTime64(3, 'UTC'),
                updated_at DateTime64(3, 'UTC'),
                baseline_median Nullable(Float64),
                mad Nullable(Float64),
                recent_value Float64,
                threshold Float64,
                count Int64,
                message String
            ) ENGINE = ReplacingMergeTree(updated_at)
            PARTITION BY toYYYYMM(fired_at)
            ORDER BY (agent_id, kind, alert_id)
            {DEDUP}
            """,
        ),
    ),
    Migration(
        12,
        "rollout_statuses: each canary rollout's statuses from atlas.rollouts.v1 (running"
        " reports over time, then its decision), with the test's figures",
        (
            f"""
            CREATE TABLE IF NOT EXISTS rollout_statuses (
                agent_id LowCardinality(String),
                role LowCardinality(String),
                rollout_id String,
                canary_version Int32,
                production_version Int32,
                state LowCardinality(String),
                started_at DateTime64(3, 'UTC'),
                updated_at DateTime64(3, 'UTC'),
                canary_count Int64,
                canary_mean Nullable(Float64),
                production_count Int64,
                production_mean Nullable(Float64),
                lower Float64,
                upper Float64,
                alpha Float64,
                reason String
            ) ENGINE = ReplacingMergeTree
            ORDER BY (agent_id, role, rollout_id, updated_at, state)
            {DEDUP}
            """,
        ),
    ),
)

MIGRATIONS += (
    Migration(
        13,
        "scored_traces.rim_version: the RIM configuration version that scored the revision"
        " (ScoredTrace v4; 0, the configured judges, for rows stored before)",
        (
            "ALTER TABLE scored_traces ADD COLUMN IF NOT EXISTS rim_version UInt32 DEFAULT 0",
            f"CREATE OR REPLACE VIEW latest_traces AS {LATEST_TRACES}",
        ),
    ),
    Migration(
        14,
        "non-degradation in canary rollouts: scored_traces.production_answer and"
        " production_reward (production's shadow answer on a canary task and its score,"
        " InteractionEvent v4, ScoredTrace v5), and rollout_statuses' paired figures"
        " (RolloutStatus v2); NULL and 0 for rows stored before",
        (
            "ALTER TABLE scored_traces ADD COLUMN IF NOT EXISTS production_answer"
            " Nullable(String), ADD COLUMN IF NOT EXISTS production_reward Nullable(Float64)",
            f"CREATE OR REPLACE VIEW latest_traces AS {LATEST_TRACES}",
            "ALTER TABLE rollout_statuses ADD COLUMN IF NOT EXISTS paired_count Int64 DEFAULT 0,"
            " ADD COLUMN IF NOT EXISTS non_degradation Nullable(Float64),"
            " ADD COLUMN IF NOT EXISTS non_degradation_upper Nullable(Float64),"
            " ADD COLUMN IF NOT EXISTS right_count Int64 DEFAULT 0,"
            " ADD COLUMN IF NOT EXISTS retention Nullable(Float64),"
            " ADD COLUMN IF NOT EXISTS retention_upper Nullable(Float64)",
        ),
    ),
    Migration(
        15,
        "checkpoint rollouts: checkpoints.label, rollout_id, traffic_share (CheckpointEvent"
        " v2, as migration 10 for prompt versions) and rollout_statuses.kind (prompt or"
        " checkpoint); rows stored before are production prompts",
        (
            "ALTER TABLE checkpoints"
            " ADD COLUMN IF NOT EXISTS label LowCardinality(String) DEFAULT 'production',"
            " ADD COLUMN IF NOT EXISTS rollout_id Nullable(String),"
            " ADD COLUMN IF NOT EXISTS traffic_share Nullable(Float64)",
            "ALTER TABLE rollout_statuses"
            " ADD COLUMN IF NOT EXISTS kind LowCardinality(String) DEFAULT 'prompt'",
        ),
    ),
)
