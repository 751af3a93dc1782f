-- Admins' quota overrides (`/한도`, DESIGN §8): per user or per guild, per command, a daily
-- count and (users only) a cooldown that replace the env defaults. Postgres is the record;
-- Redis's `{c}:quota:overrides` hash is the cache the quota script reads, reloaded from here
-- when Redis lost it.

CREATE TABLE quota_overrides (
    -- 'u' a user, 'g' a guild.
    scope         char(1)     NOT NULL CHECK (scope IN ('u', 'g')),
    target_id     bigint      NOT NULL,
    command       text        NOT NULL,
    daily         integer     CHECK (daily >= 0),
    cooldown_secs integer     CHECK (cooldown_secs >= 0),
    set_by        bigint      NOT NULL,
    set_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT quota_overrides_pkey PRIMARY KEY (scope, target_id, command),
    CONSTRAINT quota_overrides_guild_has_no_cooldown CHECK (scope = 'u' OR cooldown_secs IS NULL)
);

COMMENT ON TABLE quota_overrides IS 'Admins'' quota overrides per user or guild and command (keyshard-ledger quota).';
COMMENT ON COLUMN quota_overrides.daily IS 'Accepted requests per day in QUOTA_TIMEZONE; 0 lifts the limit; NULL keeps the default.';
COMMENT ON COLUMN quota_overrides.cooldown_secs IS 'Seconds between two accepted requests of the user; 0 lifts it; NULL keeps the default. Users only.';
