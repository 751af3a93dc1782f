-- The usage ledger: one row per answered interaction, and a daily rollup for fast reads.
--
-- Written only by keyshard-ledger's `write_batch`, which inserts the raw rows and adds exactly
-- the rows it inserted to the rollup in one statement (ON CONFLICT DO NOTHING on the
-- interaction id), so a batch written twice changes nothing the second time.
--
-- Sizes: columns are ordered 8-byte, 4-byte, 2-byte, 1-byte, then variable-length, so the
-- row has no alignment padding; numbers that the code owns as enums are smallint codes rather
-- than text; times after the interaction's creation are int4 millisecond offsets rather than
-- 8-byte timestamps; the key fingerprint (48 bits, shown as 12 hex digits) is a bigint.
-- NULLs cost one bit, so a successful interaction pays nothing for `error_class`.

CREATE TABLE ledger (
    -- The interaction's Discord snowflake: unique, and the idempotency key of every write.
    interaction_id   bigint      NOT NULL,
    user_id          bigint      NOT NULL,
    guild_id         bigint,
    channel_id       bigint      NOT NULL,
    key_fp           bigint,
    cost_micros      bigint      NOT NULL,
    created_at       timestamptz NOT NULL,
    tokens_in        integer     NOT NULL,
    tokens_out       integer     NOT NULL,
    ack_ms           integer,
    start_ms         integer,
    finish_ms        integer     NOT NULL,
    provider_ms      integer,
    images           smallint    NOT NULL,
    video_secs       smallint    NOT NULL,
    primary_instance smallint    NOT NULL,
    served_by        smallint    NOT NULL,
    reason           smallint    NOT NULL,
    status           smallint    NOT NULL,
    rescued          boolean     NOT NULL,
    stolen           boolean     NOT NULL,
    moved            boolean     NOT NULL,
    command          text        NOT NULL,
    provider         text,
    model            text,
    error_class      text,
    CONSTRAINT ledger_pkey PRIMARY KEY (interaction_id)
);

COMMENT ON TABLE ledger IS 'One row per answered interaction (keyshard-ledger LedgerRow).';
COMMENT ON COLUMN ledger.guild_id IS 'NULL in direct messages.';
COMMENT ON COLUMN ledger.key_fp IS 'The provider key''s 48-bit fingerprint (Secret::fingerprint, 12 hex digits: lpad(to_hex(key_fp), 12, ''0'')); never the key. NULL when no provider was called.';
COMMENT ON COLUMN ledger.cost_micros IS 'Estimated cost in micro-dollars (integer: sums are exact and the rollup equals the raw rows to the unit), from the price table in force when the row was built.';
COMMENT ON COLUMN ledger.created_at IS 'The interaction''s creation time (its snowflake); the rollup day is this date in UTC.';
COMMENT ON COLUMN ledger.ack_ms IS 'Milliseconds after created_at when the interaction was acknowledged.';
COMMENT ON COLUMN ledger.start_ms IS 'Milliseconds after created_at when the run that answered started (NULL without a job); queue wait = start_ms - ack_ms.';
COMMENT ON COLUMN ledger.finish_ms IS 'Milliseconds after created_at when the final answer was posted.';
COMMENT ON COLUMN ledger.provider_ms IS 'Milliseconds spent in provider calls (NULL without one).';
COMMENT ON COLUMN ledger.reason IS 'Routing reason: 0 primary, 1 primary down, 2 primary overloaded, 3 all overloaded, 4 none alive, 5 degraded (Redis unreachable, static rule).';
COMMENT ON COLUMN ledger.status IS '0 ok, 1 failed (the user got an error message), 2 refused (a quota or a check said no).';
COMMENT ON COLUMN ledger.error_class IS 'Why it failed (keyshard-providers ErrorClass or a bot-side class); NULL when ok.';

-- Time ranges (the partial edge days of a usage query, retention). Rows arrive in about
-- creation order, which is what a BRIN index needs; it is a few pages per million rows where
-- a btree would be tens of megabytes.
CREATE INDEX ledger_created_brin ON ledger USING brin (created_at) WITH (autosummarize = on);

-- A user's own usage (/사용량 today and this month, admin "one user").
CREATE INDEX ledger_user_created ON ledger (user_id, created_at);

-- Per UTC day × user × guild × command × provider × key × serving instance. Missing values are
-- sentinels instead of NULLs so the primary key can be the ON CONFLICT target: guild 0 (a DM),
-- provider '' and key 0 (no provider call).
CREATE TABLE ledger_daily (
    day          date     NOT NULL,
    user_id      bigint   NOT NULL,
    guild_id     bigint   NOT NULL,
    key_fp       bigint   NOT NULL,
    interactions bigint   NOT NULL,
    failed       bigint   NOT NULL,
    tokens_in    bigint   NOT NULL,
    tokens_out   bigint   NOT NULL,
    images       bigint   NOT NULL,
    video_secs   bigint   NOT NULL,
    cost_micros  bigint   NOT NULL,
    queue_ms     bigint   NOT NULL,
    provider_ms  bigint   NOT NULL,
    served_by    smallint NOT NULL,
    command      text     NOT NULL,
    provider     text     NOT NULL,
    CONSTRAINT ledger_daily_pkey
        PRIMARY KEY (day, user_id, guild_id, command, provider, key_fp, served_by)
);

COMMENT ON TABLE ledger_daily IS 'Sums of ledger rows per UTC day of created_at; written in the same statement as the rows.';
COMMENT ON COLUMN ledger_daily.failed IS 'Interactions whose status is not ok.';
COMMENT ON COLUMN ledger_daily.queue_ms IS 'Sum of queue waits (start_ms - ack_ms) of the rows that had a job.';
COMMENT ON COLUMN ledger_daily.provider_ms IS 'Sum of provider_ms.';

-- The primary key serves day ranges; these serve one user's or one guild's days.
CREATE INDEX ledger_daily_user_day ON ledger_daily (user_id, day);
CREATE INDEX ledger_daily_guild_day ON ledger_daily (guild_id, day);
