"""gpt-oss-harmony-groq: one mitmproxy addon serving gpt-oss (harmony) and Groq."""
