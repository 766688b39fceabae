# Thin aliases for ./dev, the project's task runner.
.PHONY: demo test bench
demo:
	./dev demo
test:
	./dev test
bench:
	./dev bench
