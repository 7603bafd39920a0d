"""The face agent: FaceLLM (or any LangChain chat model) choosing and calling the face tools, with a rules
fallback, an identity/demographics policy and a grounding check. See ``loop.FaceAgent``."""

from .chat_model import FaceLLMChatModel, openai_chat_model
from .evidence import Evidence
from .grounding import GroundingReport, check_answer
from .loop import AgentConfig, AgentResult, FaceAgent, ToolCallRecord
from .tools import ToolRunner, langchain_tools

__all__ = ["AgentConfig", "AgentResult", "Evidence", "FaceAgent", "FaceLLMChatModel", "GroundingReport",
           "ToolCallRecord", "ToolRunner", "check_answer", "langchain_tools", "openai_chat_model"]
