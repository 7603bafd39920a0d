"""Face VQA evaluation: FaceXBench-format and built-in benchmarks, models behind OpenAI-compatible endpoints or
in-process, baselines, answer parsing, grounding and fairness metrics, and the report (``facellm eval``)."""
