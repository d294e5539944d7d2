-- Sentinel's native API (POST /native/v1/chat/completions): a tier instead of a model.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")
bench_request('{"tier":"simple","messages":[{"role":"system","content":"You are terse."},' ..
  '{"role":"user","content":"Say hello to the benchmark."}]}')
