"""gpt-oss-harmony-groq: a mitmproxy addon serving gpt-oss (harmony) and Groq behind one endpoint."""
