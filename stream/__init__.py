"""Everything live: tracking a conversation turn by turn with a trained model."""
