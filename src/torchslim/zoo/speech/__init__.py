"""Speech zoo tasks and their offline audio: eSpeak NG synthesis, log-mel features, keyword spotting."""
