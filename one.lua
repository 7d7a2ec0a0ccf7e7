wrk.method = "GET"
wrk.path = "http://bench.test/small"
wrk.headers["Host"] = "bench.test"
done = function(summary, latency, requests) end
response = function(status, headers, body) if status ~= 200 then io.write(status, " ", body, "\n"); wrk.thread:stop() end end
