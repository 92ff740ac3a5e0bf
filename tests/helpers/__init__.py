"""Code behind the fixtures in tests/conftest.py: tiny artifact folders and models, a fake OpenAI server,
storage servers and a fake KFP API. Tests reach it through those fixtures, never by importing it."""
