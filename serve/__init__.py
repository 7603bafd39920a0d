"""Serving FaceLLM: an OpenAI-compatible HTTP API over a vLLM or a transformers engine.

    facellm serve [--engine vllm|transformers] [--model DIR] [--host H] [--port P] [--api-key KEY]

Modules: settings (limits), protocol (the request schema), images (image references under the server's rules),
prompt (request -> PreparedPrompt), engines (TransformersEngine, VllmEngine), output (stop strings, tool calls),
api (the FastAPI app), query (/v1/faces/query: the face agent), agent_model (the engine's FaceLLM as the agent's
LangChain chat model), webpage (the chat page), cli (the command), vllm_plugin (FaceLLM as an out-of-tree vLLM
model).
"""
