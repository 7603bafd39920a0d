"""Instruction data for FaceLLM: face images with labels -> FairFaceGPT / FaceInstruct / FaceCaption QA and
agent tool-use traces, as LLaVA-style records (DESIGN.md contract 4). Entry points: ``facellm data generate``
and ``facellm data stats`` (cli.py), ``pipeline.generate``, ``loader.training_examples``."""
