//! Fake Discord: REST under `/api/v10` and a gateway websocket.
