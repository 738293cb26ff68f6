module chirp/bench/loadgen

go 1.22
