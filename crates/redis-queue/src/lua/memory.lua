#!lua flags=no-writes,allow-oom
local info = redis.call('INFO', 'memory')
local used = tonumber(string.match(info, 'used_memory:(%d+)')) or 0
local uncounted = tonumber(string.match(info, 'mem_not_counted_for_evict:(%d+)')) or 0
local max = tonumber(string.match(info, 'maxmemory:(%d+)')) or 0
return {math.max(used - uncounted, 0), max}
