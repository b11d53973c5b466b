# ruff: noqa: E501  (sample events, copied in the documented form: long ARNs and ids stay on one line)
"""Event shapes AWS sends to Lambda functions, written from the documented formats (the Lambda developer
guide's "Using AWS Lambda with ..." pages and their sample events: S3, SQS, EventBridge, API Gateway
REST and HTTP APIs, function URLs, ALB, DynamoDB Streams, SNS, Kinesis, CloudWatch Logs, S3 Batch
Operations), with the sample values those pages use, plus the junk a console test or a wrong wiring
hands a function. ``bucket`` is the clips bucket: some shapes name it, to show that it is the event
type, not only the bucket, that decides.
"""

from __future__ import annotations

import base64
import json
from typing import Any

ARN_BUCKET = "arn:aws:s3:::example-bucket"


def _s3_record(event_name: str, bucket: str, key: str = "test%2Fkey", size: int | None = 1024) -> dict[str, Any]:
    obj: dict[str, Any] = {"key": key, "eTag": "0123456789abcdef0123456789abcdef", "sequencer": "0A1B2C3D4E5F678901"}
    if size is not None:
        obj["size"] = size
    return {
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "1970-01-01T00:00:00.000Z", "eventName": event_name,
        "userIdentity": {"principalId": "EXAMPLE"}, "requestParameters": {"sourceIPAddress": "127.0.0.1"},
        "responseElements": {"x-amz-request-id": "EXAMPLE123456789",
                             "x-amz-id-2": "EXAMPLE123/5678abcdefghijklambdaisawesome/mnopqrstuvwxyzABCDEFGH"},
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "testConfigRule",
               "bucket": {"name": bucket, "ownerIdentity": {"principalId": "EXAMPLE"}, "arn": f"arn:aws:s3:::{bucket}"},
               "object": obj},
    }


def _s3(event_name: str, bucket: str, key: str = "test%2Fkey", size: int | None = 1024) -> dict[str, Any]:
    return {"Records": [_s3_record(event_name, bucket, key, size)]}


def _v2(body: str | None = "Hello from Lambda", b64: bool = False, path: str = "/my/path") -> dict[str, Any]:
    ev: dict[str, Any] = {
        "version": "2.0", "routeKey": "$default", "rawPath": path,
        "rawQueryString": "parameter1=value1&parameter1=value2&parameter2=value",
        "cookies": ["cookie1", "cookie2"], "headers": {"header1": "value1", "header2": "value1,value2"},
        "queryStringParameters": {"parameter1": "value1,value2", "parameter2": "value"},
        "requestContext": {
            "accountId": "123456789012", "apiId": "api-id",
            "authentication": {"clientCert": {"clientCertPem": "CERT_CONTENT", "subjectDN": "www.example.com",
                                              "issuerDN": "Example issuer", "serialNumber": "a1:a1:a1:a1",
                                              "validity": {"notBefore": "May 28 12:30:02 2019 GMT",
                                                           "notAfter": "Aug  5 09:36:04 2021 GMT"}}},
            "authorizer": {"jwt": {"claims": {"claim1": "value1", "claim2": "value2"}, "scopes": ["scope1"]}},
            "domainName": "id.execute-api.us-east-1.amazonaws.com", "domainPrefix": "id",
            "http": {"method": "POST", "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1",
                     "userAgent": "agent"},
            "requestId": "id", "routeKey": "$default", "stage": "$default",
            "time": "12/Mar/2020:19:03:58 +0000", "timeEpoch": 1583348638390,
        },
        "pathParameters": {"parameter1": "value1"}, "isBase64Encoded": b64,
        "stageVariables": {"stageVariable1": "value1", "stageVariable2": "value2"},
    }
    if body is not None:
        ev["body"] = body
    return ev


def samples(bucket: str) -> list[tuple[str, Any]]:
    """(name, event) for every shape; the same list is fed to every handler."""
    s3_put = _s3("ObjectCreated:Put", "example-bucket")
    sqs_wrapped = {"Records": [{
        "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d", "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a",
        "body": json.dumps(_s3("ObjectCreated:Put", bucket, "clips/s/d/20260101T000000Z.wav")),
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1545082649183",
                       "SenderId": "AIDAIENQZJOLO23YVJ4VO", "ApproximateFirstReceiveTimestamp": "1545082649185"},
        "messageAttributes": {}, "md5OfBody": "098f6bcd4621d373cade4e832627b4f6", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:111122223333:my-queue", "awsRegion": "us-east-1"}]}
    eventbridge_s3 = {
        "version": "0", "id": "17793124-05d4-b198-2fde-7ededc63b103", "detail-type": "Object Created",
        "source": "aws.s3", "account": "111122223333", "time": "2021-11-12T00:00:00Z", "region": "ca-central-1",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {"version": "0", "bucket": {"name": bucket},
                   "object": {"key": "clips/s/d/20260101T000000Z.wav", "size": 5, "etag": "b1946ac92492d2347c6235b4d2611184",
                              "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e", "sequencer": "00617F08299329D189"},
                   "request-id": "N4N7GDK58NMKJ12R", "requester": "123456789012", "source-ip-address": "1.2.3.4",
                   "reason": "PutObject"}}
    rest_v1 = {
        "resource": "/{proxy+}", "path": "/path/to/resource", "httpMethod": "POST",
        "headers": {"Accept": "text/html", "Content-Type": "application/json", "Host": "1234567890.execute-api.us-east-1.amazonaws.com"},
        "multiValueHeaders": {"Accept": ["text/html"]}, "queryStringParameters": {"foo": "bar"},
        "multiValueQueryStringParameters": {"foo": ["bar"]}, "pathParameters": {"proxy": "/path/to/resource"},
        "stageVariables": {"baz": "qux"},
        "requestContext": {"accountId": "123456789012", "resourceId": "123456", "stage": "prod",
                           "requestId": "c6af9ac6-7b61-11e6-9a41-93e8deadbeef", "requestTime": "09/Apr/2015:12:34:56 +0000",
                           "requestTimeEpoch": 1428582896000, "identity": {"sourceIp": "127.0.0.1", "userAgent": "Custom User Agent String"},
                           "path": "/prod/path/to/resource", "resourcePath": "/{proxy+}", "httpMethod": "POST",
                           "apiId": "1234567890", "protocol": "HTTP/1.1"},
        "body": "eyJ0ZXN0IjoiYm9keSJ9", "isBase64Encoded": True}
    alb = {"requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/lambda-279XGJDqGZ5rsrHC2Fjr/49e9d65c45c6791a"}},
           "httpMethod": "GET", "path": "/lambda", "queryStringParameters": {"query": "1234ABCD"},
           "headers": {"accept": "text/html", "host": "lambda-alb-123578498.us-east-1.elb.amazonaws.com"},
           "body": "", "isBase64Encoded": False}
    ddb_stream = {"Records": [
        {"eventID": "1", "eventVersion": "1.0", "dynamodb": {
            "Keys": {"Id": {"N": "101"}}, "NewImage": {"Message": {"S": "New item!"}, "Id": {"N": "101"}},
            "StreamViewType": "NEW_AND_OLD_IMAGES", "SequenceNumber": "111", "SizeBytes": 26},
         "awsRegion": "us-west-2", "eventName": "INSERT", "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/ExampleTableWithStream/stream/2015-06-27T00:48:05.899",
         "eventSource": "aws:dynamodb"},
        {"eventID": "2", "eventVersion": "1.0", "dynamodb": {
            "OldImage": {"Message": {"S": "New item!"}, "Id": {"N": "101"}}, "SequenceNumber": "222",
            "Keys": {"Id": {"N": "101"}}, "SizeBytes": 59, "NewImage": {"Message": {"S": "This item has changed"}, "Id": {"N": "101"}},
            "StreamViewType": "NEW_AND_OLD_IMAGES"}, "awsRegion": "us-west-2", "eventName": "MODIFY",
         "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/ExampleTableWithStream/stream/2015-06-27T00:48:05.899",
         "eventSource": "aws:dynamodb"},
        {"eventID": "3", "eventVersion": "1.0", "dynamodb": {
            "Keys": {"Id": {"N": "101"}}, "SizeBytes": 38, "SequenceNumber": "333",
            "OldImage": {"Message": {"S": "This item has changed"}, "Id": {"N": "101"}}, "StreamViewType": "NEW_AND_OLD_IMAGES"},
         "awsRegion": "us-west-2", "eventName": "REMOVE", "eventSourceARN": "arn:aws:dynamodb:us-east-1:123456789012:table/ExampleTableWithStream/stream/2015-06-27T00:48:05.899",
         "eventSource": "aws:dynamodb"}]}
    scheduled = {"version": "0", "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa", "detail-type": "Scheduled Event",
                 "source": "aws.events", "account": "123456789012", "time": "2015-10-08T16:53:06Z", "region": "us-east-1",
                 "resources": ["arn:aws:events:us-east-1:123456789012:rule/my-scheduled-rule"], "detail": {}}
    sns = {"Records": [{"EventVersion": "1.0", "EventSubscriptionArn": "arn:aws:sns:us-east-1:123456789012:sns-lambda:21be56ed-a058-49f5-8c98-aedd2564c486",
                        "EventSource": "aws:sns", "Sns": {"SignatureVersion": "1", "Timestamp": "2019-01-02T12:45:07.000Z",
                                                          "Signature": "tcc6faL2yUC6dgZdmrwh1Y4cGa/ebXEkAi6RibDsvpi+tE/1+82j...65r==",
                                                          "SigningCertUrl": "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-ac565b8b1a6c5d002d285f9598aa1d9b.pem",
                                                          "MessageId": "95df01b4-ee98-5cb9-9903-4c221d41eb5e", "Message": "Hello from SNS!",
                                                          "MessageAttributes": {}, "Type": "Notification",
                                                          "UnsubscribeUrl": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
                                                          "TopicArn": "arn:aws:sns:us-east-1:123456789012:sns-lambda", "Subject": "TestInvoke"}}]}
    kinesis = {"Records": [{"kinesis": {"kinesisSchemaVersion": "1.0", "partitionKey": "1", "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
                                        "data": "SGVsbG8sIHRoaXMgaXMgYSB0ZXN0Lg==", "approximateArrivalTimestamp": 1545084650.987},
                            "eventSource": "aws:kinesis", "eventVersion": "1.0", "eventID": "shardId-000000000006:49590338271490256608559692538361571095921575989136588898",
                            "eventName": "aws:kinesis:record", "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
                            "awsRegion": "us-east-2", "eventSourceARN": "arn:aws:kinesis:us-east-2:123456789012:stream/lambda-stream"}]}
    logs = {"awslogs": {"data": base64.b64encode(b"\x1f\x8b\x08\x00not really gzip").decode()}}
    batch_ops = {"invocationSchemaVersion": "1.0", "invocationId": "YXNkbGZqYWRmaiBhc2RmdW9hZHNmZGpmaGFzbGtkaGZza2RmaAo",
                 "job": {"id": "f3cc4f60-61f6-4a2b-8a21-d07600c373ce"},
                 "tasks": [{"taskId": "dGFza2lkZ29lc2hlcmUK", "s3Key": "clips/s/d/20260101T000000Z.wav",
                            "s3VersionId": "1", "s3BucketArn": f"arn:aws:s3:::{bucket}"}]}
    return [
        ("S3 ObjectCreated:Put, AWS's sample (bucket example-bucket)", s3_put),
        ("S3 ObjectCreated:Put for another bucket, a clip-shaped key", _s3("ObjectCreated:Put", "other-bucket", "clips/s/d/20260101T000000Z.wav")),
        ("S3 ObjectRemoved:Delete for the clips bucket", _s3("ObjectRemoved:Delete", bucket, "clips/s/d/20260101T000000Z.wav", None)),
        ("S3 ObjectRemoved:DeleteMarkerCreated for the clips bucket", _s3("ObjectRemoved:DeleteMarkerCreated", bucket, "clips/s/d/20260101T000000Z.wav", None)),
        ("S3 LifecycleExpiration:Delete for the clips bucket", _s3("LifecycleExpiration:Delete", bucket, "clips/s/d/20260101T000000Z.wav", None)),
        ("S3 ObjectRestore:Completed for the clips bucket", _s3("ObjectRestore:Completed", bucket, "clips/s/d/20260101T000000Z.wav")),
        ("S3 ObjectTagging:Put for the clips bucket", _s3("ObjectTagging:Put", bucket, "clips/s/d/20260101T000000Z.wav")),
        ("S3 ObjectCreated:Put for the clips bucket, size a string", _s3("ObjectCreated:Put", bucket, "clips/s/d/20260101T000000Z.wav") | {
            "Records": [_s3_record("ObjectCreated:Put", bucket, "clips/s/d/20260101T000000Z.wav") | {"s3": {
                "bucket": {"name": bucket}, "object": {"key": "clips/s/d/20260101T000000Z.wav", "size": "big"}}}]}),
        ("S3 ObjectCreated:Put for the clips bucket, no object", {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}}}]}),
        ("s3:TestEvent", {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2014-10-13T15:57:02.089Z",
                          "Bucket": bucket, "RequestId": "5582815E1AEA5ADF", "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE"}),
        ("SQS message wrapping an S3 ObjectCreated event", sqs_wrapped),
        ("EventBridge S3 Object Created", eventbridge_s3),
        ("API Gateway REST API (payload 1.0) proxy request", rest_v1),
        ("API Gateway HTTP API (payload 2.0), AWS's sample", _v2()),
        ("HTTP API 2.0, body not valid base64", _v2("!!not base64!!", b64=True)),
        ("HTTP API 2.0, no requestContext", {k: v for k, v in _v2().items() if k != "requestContext"}),
        ("ALB target request", alb),
        ("DynamoDB stream batch, AWS's sample (INSERT, MODIFY, REMOVE)", ddb_stream),
        ("DynamoDB stream record without SequenceNumber", {"Records": [{"eventSource": "aws:dynamodb", "eventName": "INSERT", "dynamodb": {}}]}),
        ("EventBridge Scheduled Event, AWS's sample", scheduled),
        ("Scheduled Event with an impossible time", scheduled | {"time": "9999-12-31T23:59:59-14:00"}),
        ("Scheduled Event with a time that is not a time", scheduled | {"time": "yesterday"}),
        ("SNS notification", sns),
        ("Kinesis record", kinesis),
        ("CloudWatch Logs subscription", logs),
        ("S3 Batch Operations task", batch_ops),
        ("Lambda console hello-world test event", {"key1": "value1", "key2": "value2", "key3": "value3"}),
        ("empty object {}", {}),
        ("Records is null", {"Records": None}),
        ("Records is a string", {"Records": "x"}),
        ("Records holds a null", {"Records": [None]}),
        ("null", None),
        ("a list", [1, 2, 3]),
        ("a string", "hello"),
        ("a number", 42),
    ]
