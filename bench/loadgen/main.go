// loadgen is an open-loop HTTP load generator: requests start on a fixed
// schedule whatever the latency of earlier ones, and each latency is measured
// from the request's scheduled start, so a stalled server shows up in the
// tail instead of silently lowering the offered load (no coordinated omission).
//
//	loadgen -targets targets.json -rate 500 -duration 10s -out result.json
//
// targets.json is a list of {"method","url","headers","body"}; they are used
// round robin. The output holds every latency (microseconds) and status.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

type target struct {
	Method  string            `json:"method"`
	URL     string            `json:"url"`
	Headers map[string]string `json:"headers"`
	Body    string            `json:"body"`
}

type result struct {
	Rate        float64 `json:"rate"`
	DurationS   float64 `json:"duration_s"`
	ElapsedS    float64 `json:"elapsed_s"`
	LatenciesUS []int64 `json:"latencies_us"`
	Statuses    []int   `json:"statuses"`
	Dropped     int     `json:"dropped"`
}

func main() {
	targetsPath := flag.String("targets", "", "JSON file with the targets")
	rate := flag.Float64("rate", 100, "requests per second")
	duration := flag.Duration("duration", 10*time.Second, "how long to send")
	timeout := flag.Duration("timeout", 5*time.Second, "per-request timeout")
	maxInFlight := flag.Int("max-in-flight", 5000, "requests in flight before new ones are dropped (counted)")
	out := flag.String("out", "", "where to write the JSON result")
	flag.Parse()

	raw, err := os.ReadFile(*targetsPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	var targets []target
	if err := json.Unmarshal(raw, &targets); err != nil || len(targets) == 0 {
		fmt.Fprintln(os.Stderr, "targets: need a non-empty JSON list", err)
		os.Exit(2)
	}
	transport := &http.Transport{
		MaxIdleConns:        *maxInFlight,
		MaxIdleConnsPerHost: *maxInFlight,
		IdleConnTimeout:     30 * time.Second,
		DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
	}
	client := &http.Client{Transport: transport, Timeout: *timeout}

	total := int(*rate * duration.Seconds())
	interval := time.Duration(float64(time.Second) / *rate)
	latencies := make([]int64, total)
	statuses := make([]int, total)
	inFlight := make(chan struct{}, *maxInFlight)
	var wg sync.WaitGroup
	dropped := 0
	start := time.Now()
	for i := 0; i < total; i++ {
		due := start.Add(time.Duration(i) * interval)
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		select {
		case inFlight <- struct{}{}:
		default:
			dropped++
			statuses[i] = -1
			continue
		}
		wg.Add(1)
		go func(i int, due time.Time, t target) {
			defer wg.Done()
			defer func() { <-inFlight }()
			req, err := http.NewRequest(t.Method, t.URL, bytes.NewBufferString(t.Body))
			if err == nil {
				for k, v := range t.Headers {
					req.Header.Set(k, v)
				}
				var resp *http.Response
				resp, err = client.Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					statuses[i] = resp.StatusCode
				}
			}
			if err != nil {
				statuses[i] = 0
			}
			latencies[i] = time.Since(due).Microseconds()
		}(i, due, targets[i%len(targets)])
	}
	wg.Wait()
	res := result{Rate: *rate, DurationS: duration.Seconds(), ElapsedS: time.Since(start).Seconds(),
		LatenciesUS: latencies, Statuses: statuses, Dropped: dropped}
	encoded, _ := json.Marshal(res)
	if *out == "" {
		os.Stdout.Write(encoded)
		return
	}
	if err := os.WriteFile(*out, encoded, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
