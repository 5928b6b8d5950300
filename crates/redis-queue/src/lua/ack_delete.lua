#!lua flags=allow-oom
local n = 0
for i = 2, #ARGV, 1000 do
  local j = math.min(i + 999, #ARGV)
  redis.call('XDEL', KEYS[1], unpack(ARGV, i, j))
  n = n + redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, i, j))
end
return n
