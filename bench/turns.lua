-- wrk script: POST one turn per request, spreading them round-robin over the chat ids listed
-- (one per line) in the file named by the first script argument. A second argument "stream"
-- asks for streamed turns, "responses" posts them to OpenAI's POST /v1/responses with the chat
-- as the conversation; a third, "id", sends an X-Request-ID with each (one per chat). done()
-- prints one machine-readable line for bench/load.py.

local turns = {}
local index = 1
local question = "Hello! Please summarize what a benchmark of a chat relay should measure."

function init(args)
  for id in io.lines(args[1]) do
    local headers = { ["Content-Type"] = "application/json" }
    if args[3] == "id" then
      headers["X-Request-ID"] = "bench-" .. id
    end
    if args[2] == "responses" then
      local body = '{"model":"bench","input":"' .. question .. '","conversation":"' .. id .. '"}'
      turns[#turns + 1] = wrk.format("POST", "/v1/responses", headers, body)
    elseif args[2] == "stream" then
      local body = '{"content":"' .. question .. '","stream":true}'
      turns[#turns + 1] = wrk.format("POST", "/chats/" .. id .. "/messages", headers, body)
    else
      local body = '{"content":"' .. question .. '"}'
      turns[#turns + 1] = wrk.format("POST", "/chats/" .. id .. "/messages", headers, body)
    end
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
