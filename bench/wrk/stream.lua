-- Streaming OpenAI chat completion (POST /v1/chat/completions with "stream": true); wrk's latency
-- is the time to the end of the SSE stream.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")
bench_request('{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"system","content":"You are terse."},' ..
  '{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":64}')
