"""`python -m bench` (or `make bench`): run every benchmark and print its figures."""

from bench import agi_latency, ami_throughput, pool_accuracy, report_bench, web_load

if __name__ == "__main__":
    for bench in (agi_latency, ami_throughput, web_load, pool_accuracy, report_bench):
        bench.main([])
        print()
