-- wrk script: POST one turn per request, spreading them round-robin over the chat ids listed
-- (one per line) in the file named by the first script argument. A second argument "stream"
-- asks for streamed turns; a third, "id", sends an X-Request-ID with each (one per chat). done()
-- prints one machine-readable line for bench/load.py.

local turns = {}
local index = 1

function init(args)
  local body = '{"content":"Hello! Please summarize what a benchmark of a chat relay should measure."}'
  if args[2] == "stream" then
    body = '{"content":"Hello! Please summarize what a benchmark of a chat relay should measure.","stream":true}'
  end
  for id in io.lines(args[1]) do
    local headers = { ["Content-Type"] = "application/json" }
    if args[3] == "id" then
      headers["X-Request-ID"] = "bench-" .. id
    end
    turns[#turns + 1] = wrk.format("POST", "/chats/" .. id .. "/messages", headers, body)
  end
  math.randomseed(os.time())
  index = math.random(#turns)
end

function request()
  local turn = turns[index]
  index = index % #turns + 1
  return turn
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
      .. '"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write, errors.status,
    errors.timeout, latency:percentile(50), latency:percentile(99)))
end
