"""`python -m bench` (or `make bench`): run every benchmark and print its figures."""

from bench import agi_latency, ami_throughput

if __name__ == "__main__":
    agi_latency.main([])
    print()
    ami_throughput.main([])
