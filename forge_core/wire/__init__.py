"""Client wire formats: parsing requests and emitting responses, one module per protocol."""
