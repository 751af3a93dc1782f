//! The quota's two Lua scripts: admission (check every rule, reserve all or none, remember the
//! verdict per interaction) and refund (give back the daily counts once).

use std::sync::LazyLock;

/// Check and reserve, atomically. KEYS: reservation, user's day, guild's day (unused outside
/// a guild), cooldown, overrides. ARGV: default user daily, guild daily, cooldown secs;
/// now ms; ms until the day resets; in a guild (0/1); the three override fields; the
/// reservation's and the day counters' TTLs. The order of the checks is `judge`'s.
///
/// Returns `{"A"}` (admitted) or `{"R", rule, limit, until_ms}`.
pub(super) const ADMIT_SCRIPT: &str = r#"
local prior = redis.call('GET', KEYS[1])
if prior then
  if string.sub(prior, 1, 1) == 'R' then
    local f = {}
    for part in string.gmatch(prior, '[^\n]+') do f[#f + 1] = part end
    return {'R', f[2], f[3], f[4]}
  end
  return {'A'}
end
local udaily = tonumber(ARGV[1])
local gdaily = tonumber(ARGV[2])
local cd = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local to_reset = tonumber(ARGV[5])
local in_guild = ARGV[6] == '1'
local o = redis.call('HMGET', KEYS[5], ARGV[7], ARGV[8], ARGV[9])
if o[1] then udaily = tonumber(o[1]) end
if o[2] then cd = tonumber(o[2]) end
if o[3] then gdaily = tonumber(o[3]) end
local function refuse(rule, limit, until_ms)
  redis.call('SET', KEYS[1], 'R\n' .. rule .. '\n' .. limit .. '\n' .. until_ms, 'PX', ARGV[10])
  return {'R', rule, tostring(limit), tostring(until_ms)}
end
if cd > 0 then
  local left = redis.call('PTTL', KEYS[4])
  if left > 0 then return refuse('cooldown', cd, now + left) end
end
if udaily > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= udaily then
  return refuse('user_daily', udaily, now + to_reset)
end
if in_guild and gdaily > 0 and tonumber(redis.call('GET', KEYS[3]) or '0') >= gdaily then
  return refuse('guild_daily', gdaily, now + to_reset)
end
-- Every request is counted, limited or not: a limit an admin sets later in the day then
-- starts from the true count, and the reconciliation compares every counter.
redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[11])
local gkey = ''
if in_guild then
  redis.call('INCR', KEYS[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[11])
  gkey = KEYS[3]
end
if cd > 0 then redis.call('SET', KEYS[4], '1', 'PX', cd * 1000) end
redis.call('SET', KEYS[1], 'A\n' .. KEYS[2] .. '\n' .. gkey, 'PX', ARGV[10])
return {'A'}
"#;

/// Gives back the daily counts an admitted interaction reserved, once (the record turns from
/// `A` to `F`). The counters' names come from the record, so a refund after midnight gives
/// back to the day that was charged. Keys read from a value are fine on the single Redis a
/// cluster uses (a Redis Cluster would need them declared).
///
/// The cooldown is not given back: it paces attempts, and a failing provider is exactly when
/// users retry in a tight loop; the daily counts are what a failed job must not cost.
pub(super) const REFUND_SCRIPT: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, 1) ~= 'A' then return 0 end
local f = {}
for part in string.gmatch(v, '[^\n]+') do f[#f + 1] = part end
for i = 2, #f do
  local n = tonumber(redis.call('GET', f[i]) or '0')
  if n > 0 then redis.call('DECR', f[i]) end
end
redis.call('SET', KEYS[1], 'F' .. string.sub(v, 2), 'KEEPTTL')
return 1
"#;

pub(super) static ADMIT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(ADMIT_SCRIPT));
pub(super) static REFUND: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(REFUND_SCRIPT));
