-- Non-streaming Anthropic Messages call (POST /v1/messages) on a Claude model: Sentinel relays it to
-- the Anthropic-format upstream as it is (the same-format fast path). Direct/bare: the mock's own
-- /v1/messages. The mock needs anthropic-version (Sentinel adds it when absent; sent here for all).
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")
bench_request('{"model":"claude-3-5-haiku-20241022","max_tokens":64,"system":"You are terse.",' ..
  '"messages":[{"role":"user","content":"Say hello to the benchmark."}]}')
wrk.headers["anthropic-version"] = "2023-06-01"
