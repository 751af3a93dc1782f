//! Fake AI providers (OpenAI, MiniMax, Stability) with the real request and response shapes.
