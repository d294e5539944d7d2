-- Anthropic Messages call on an OpenAI model (POST /v1/messages, "model": "gpt-4o-mini"): Sentinel
-- translates it to /v1/chat/completions and the answer back (cross-format). Sentinel only: the
-- direct/bare columns are the chat scenario's (the equivalent upstream call).
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")
bench_request('{"model":"gpt-4o-mini","max_tokens":64,"system":"You are terse.",' ..
  '"messages":[{"role":"user","content":"Say hello to the benchmark."}]}')
wrk.headers["anthropic-version"] = "2023-06-01"
