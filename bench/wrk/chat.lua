-- Non-streaming OpenAI chat completion (POST /v1/chat/completions).
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")
bench_request('{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},' ..
  '{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":64}')
