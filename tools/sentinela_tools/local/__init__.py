"""The embedded local stack: moto's server mode for S3/DynamoDB(+Streams)/SQS/Secrets Manager, an event
router that calls the real handlers, and a Twilio-compatible stub. Needs the ``dev`` extra (moto)."""
