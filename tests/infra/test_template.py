"""Policy checks for infra/template.yaml and the Lambda event fixtures in events/.

The checks run on the SAM template as written and on its CloudFormation expansion
(samtranslator, offline), so roles or notifications that SAM would generate are covered too.
Each check returns a list of violations; the mutation tests prove every check can fail.
"""

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote_plus

import pytest
from cfnlint.decode import cfn_yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import emf  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "infra" / "template.yaml"
EVENTS = ROOT / "events"

# Function logical id -> cargo binary it runs.
FUNCTIONS = {"SubmitFunction": "submit", "PollFunction": "poll", "CollectFunction": "collect"}
TRIGGER_PREFIX = "inbox/"
# Prefixes the functions write to; an upload trigger must never cover one of them.
SYSTEM_WRITE_PREFIXES = ("jobs/", "open/", "results/")
BUCKET_PREFIXES = ("inbox/", "pipelines/", "jobs/", "open/", "results/", "bedrock/input/", "bedrock/output/")
# The only shape a wildcard resource may take: objects under one known prefix of this stack's bucket.
SCOPED_OBJECT_ARN = re.compile(
    r"^arn:\$\{AWS::Partition\}:s3:::\$\{BucketName\}/(?P<prefix>(%s))\*$"
    % "|".join(re.escape(p) for p in BUCKET_PREFIXES)
)
BUCKET_ARN = "arn:${AWS::Partition}:s3:::${BucketName}"
# The other wildcard a resource may hold: Bedrock batch jobs of this account and region.
BEDROCK_JOBS_ARN = "arn:${AWS::Partition}:bedrock:${AWS::Region}:${AWS::AccountId}:model-invocation-job/*"
# Policies for people (the CLI's operators), attached to no function.
PEOPLE_POLICIES = {"OperatorPolicy"}
# Actions that take no resource (AWS's service authorization reference lists "*" only).
RESOURCELESS_ACTIONS = {"bedrock:listmodelinvocationjobs"}
S3_WRITE_ACTIONS = {"s3:putobject", "s3:copyobject", "s3:restoreobject", "s3:putobjectacl"}
COMMON_ENV = {
    "BUCKET_NAME",
    "OPENAI_API_KEY_SECRET_ARN",
    "ANTHROPIC_API_KEY_SECRET_ARN",
    "GEMINI_API_KEY_SECRET_ARN",
    "GOOGLE_CREDENTIALS_SECRET_ARN",
    "GOOGLE_CLOUD_PROJECT",
    "GOOGLE_CLOUD_LOCATION",
    "GCS_BUCKET",
    "BEDROCK_ROLE_ARN",
    "BEDROCK_BUCKET",
    "RUST_LOG",
}
EXTRA_ENV = {
    "SubmitFunction": {"LEDGER_TABLE", "SUBMIT_QUEUE_URL", "QUOTA_LIMITS"},
    "PollFunction": {
        "READY_QUEUE_URL",
        "POLL_CONCURRENCY",
        "POLL_JOBS_QUEUE_URL",
        "SUBMIT_QUEUE_URL",
        "QUOTA_LIMITS",
    },
    "CollectFunction": {"READY_QUEUE_URL", "COLLECT_MAX_RECEIVES", "LEDGER_TABLE"},
}
# What each function's SQS event source must look like: collect takes one part a
# delivery and knows the queue's receive count; poll's workers take ten open jobs.
EVENT_SOURCES = {
    "CollectFunction": {"batch_size": 1, "max_receives_env": "COLLECT_MAX_RECEIVES"},
    "PollFunction": {"batch_size": 10, "max_receives_env": None},
    "SubmitFunction": {"batch_size": 1, "max_receives_env": None},
}


# ---------------------------------------------------------------- template helpers


def load_template():
    # cfn-lint's loader turns !Ref/!Sub/!GetAtt tags into their long forms; the JSON
    # round trip drops its node classes so copies and comparisons behave like plain data.
    return json.loads(json.dumps(cfn_yaml.load(str(TEMPLATE_PATH))))


class _NoManagedPolicies:
    """samtranslator asks for AWS managed policy names; an explicit-role template needs none."""

    def load(self):
        return {}


def sam_transform(template):
    """The CloudFormation the SAM transform produces, computed offline."""
    from samtranslator.translator.transform import transform

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    local = copy.deepcopy(template)
    # samtranslator wants an S3 code location; the local path is checked separately.
    local.get("Globals", {}).get("Function", {}).pop("CodeUri", None)
    for resource in local["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = "s3://placeholder/code.zip"
    return transform(local, {}, _NoManagedPolicies())


def render(value):
    """Every string an intrinsic can produce, with references kept as ${Name} placeholders."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in render(item)]
    if isinstance(value, dict) and len(value) == 1:
        ((function, argument),) = value.items()
        if function == "Ref":
            return [] if argument == "AWS::NoValue" else ["${%s}" % argument]
        if function == "Fn::GetAtt":
            return ["${%s}" % (argument if isinstance(argument, str) else ".".join(argument))]
        if function == "Fn::Sub":
            return [argument if isinstance(argument, str) else argument[0]]
        if function == "Fn::If":
            return render(argument[1]) + render(argument[2])
    return ["<unresolved %s>" % json.dumps(value)]


def as_list(value):
    return value if isinstance(value, list) else [value]


def resources_of(template, resource_type):
    return {
        name: resource
        for name, resource in template["Resources"].items()
        if resource["Type"] == resource_type
    }


def getatt_target(value):
    """Logical id named by a GetAtt (either form), else None."""
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        argument = value["Fn::GetAtt"]
        return argument.split(".")[0] if isinstance(argument, str) else argument[0]
    return None


def policy_documents(template):
    """(owner, document, is_identity_policy) for every policy document in the template."""
    for name, resource in template["Resources"].items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::IAM::Role":
            for policy in properties.get("Policies", []):
                yield f"{name}/{policy['PolicyName']}", policy["PolicyDocument"], True
        elif resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            yield name, properties["PolicyDocument"], True
        elif resource["Type"] in ("AWS::S3::BucketPolicy", "AWS::SQS::QueuePolicy"):
            yield name, properties["PolicyDocument"], False


def allow_statements(template):
    for owner, document, _ in policy_documents(template):
        for statement in as_list(document["Statement"]):
            if statement.get("Effect") == "Allow":
                yield owner, statement


def statement_actions(statement):
    return [action.lower() for action in render(statement.get("Action", []))]


def role_statements(template, role_name):
    role = template["Resources"][role_name]["Properties"]
    statements = [
        statement
        for policy in role.get("Policies", [])
        for statement in as_list(policy["PolicyDocument"]["Statement"])
    ]
    for arn in render(role.get("ManagedPolicyArns", [])):
        policy = template["Resources"].get(arn.strip("${}"))
        if policy and policy["Type"] == "AWS::IAM::ManagedPolicy":
            statements.extend(as_list(policy["Properties"]["PolicyDocument"]["Statement"]))
    return statements


def object_prefix(resource):
    match = SCOPED_OBJECT_ARN.match(resource)
    return match.group("prefix") if match else None


# ---------------------------------------------------------------- checks (each returns violations)


def check_iam(cfn):
    problems = []
    for owner, statement in allow_statements(cfn):
        for key in ("NotAction", "NotResource", "NotPrincipal"):
            if key in statement:
                problems.append(f"{owner}: Allow with {key}")
        for action in statement_actions(statement):
            if "*" in action or "?" in action or ":" not in action:
                problems.append(f"{owner}: wildcard or malformed action {action!r}")
        if statement.get("Principal") in ("*", {"AWS": "*"}):
            problems.append(f"{owner}: Allow to any principal")
        for resource in render(statement.get("Resource", [])):
            if resource.startswith("<unresolved"):
                problems.append(f"{owner}: cannot tell what resource {resource} is")
            elif resource == "*" and set(statement_actions(statement)) <= RESOURCELESS_ACTIONS:
                continue
            elif resource == BEDROCK_JOBS_ARN:
                continue
            elif ("*" in resource or "?" in resource) and object_prefix(resource) is None:
                problems.append(f"{owner}: unscoped wildcard resource {resource!r}")
            elif ":s3:::" in resource and not (
                resource == BUCKET_ARN or resource.startswith(BUCKET_ARN + "/")
            ):
                problems.append(f"{owner}: S3 resource outside this stack's bucket {resource!r}")
    for name, role in resources_of(cfn, "AWS::IAM::Role").items():
        for arn in render(role["Properties"].get("ManagedPolicyArns", [])):
            target = cfn["Resources"].get(arn.strip("${}"), {}).get("Type")
            if target != "AWS::IAM::ManagedPolicy":
                problems.append(f"{name}: attaches a policy not defined here {arn!r}")
    return problems


def check_secret_access(cfn):
    """Secrets may only be readable when their parameter is set."""
    problems = []
    conditions = cfn.get("Conditions", {})
    for owner, statement in allow_statements(cfn):
        if not any(a.startswith("secretsmanager:") for a in statement_actions(statement)):
            continue
        for entry in as_list(statement["Resource"]):
            branches = entry.get("Fn::If") if isinstance(entry, dict) else None
            if not branches or branches[2] != {"Ref": "AWS::NoValue"}:
                problems.append(f"{owner}: secret access not conditional: {entry}")
                continue
            parameter = branches[1].get("Ref") if isinstance(branches[1], dict) else None
            expected = {"Fn::Not": [{"Fn::Equals": [{"Ref": parameter}, ""]}]}
            if parameter is None or conditions.get(branches[0]) != expected:
                problems.append(f"{owner}: {branches[0]} does not test that {parameter} is set")
            elif cfn["Parameters"][parameter].get("Default") != "":
                problems.append(f"{owner}: {parameter} must default to empty")
    return problems


def check_bucket(cfn):
    problems = []
    buckets = resources_of(cfn, "AWS::S3::Bucket")
    if not buckets:
        problems.append("no bucket")
    policies = resources_of(cfn, "AWS::S3::BucketPolicy").values()
    for name, bucket in buckets.items():
        properties = bucket.get("Properties", {})
        block = properties.get("PublicAccessBlockConfiguration", {})
        for flag in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"):
            if block.get(flag) is not True:
                problems.append(f"{name}: public access block {flag} is not true")
        rules = properties.get("BucketEncryption", {}).get("ServerSideEncryptionConfiguration", [])
        algorithms = {r.get("ServerSideEncryptionByDefault", {}).get("SSEAlgorithm") for r in rules}
        if not algorithms or not algorithms <= {"AES256", "aws:kms", "aws:kms:dsse"}:
            problems.append(f"{name}: default encryption missing or unknown {algorithms}")
        if properties.get("VersioningConfiguration", {}).get("Status") != "Enabled":
            problems.append(f"{name}: versioning not enabled (job ids derive from versions)")
        tls_only = any(
            policy["Properties"]["Bucket"] == {"Ref": name} and denies_insecure_transport(policy)
            for policy in policies
        )
        if not tls_only:
            problems.append(f"{name}: no bucket policy denying aws:SecureTransport=false")
    return problems


def denies_insecure_transport(bucket_policy):
    for statement in as_list(bucket_policy["Properties"]["PolicyDocument"]["Statement"]):
        insecure = statement.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")
        resources = set(render(statement.get("Resource", [])))
        if (
            statement.get("Effect") == "Deny"
            and statement.get("Principal") in ("*", {"AWS": "*"})
            and set(statement_actions(statement)) & {"s3:*", "*"}
            and str(insecure).lower() == "false"
            and {BUCKET_ARN, BUCKET_ARN + "/*"} <= resources
        ):
            return True
    return False


def check_notifications(cfn):
    """Uploads under inbox/ trigger submit; nothing the functions write can."""
    problems = []
    trigger_prefixes = []
    for name, bucket in resources_of(cfn, "AWS::S3::Bucket").items():
        notification = bucket.get("Properties", {}).get("NotificationConfiguration", {})
        for kind in ("QueueConfigurations", "TopicConfigurations", "EventBridgeConfiguration"):
            if kind in notification:
                problems.append(f"{name}: unexpected {kind}")
        for config in notification.get("LambdaConfigurations", []):
            rules = config.get("Filter", {}).get("S3Key", {}).get("Rules", [])
            prefixes = [r["Value"] for r in rules if r["Name"].lower() == "prefix"]
            if prefixes != [TRIGGER_PREFIX]:
                problems.append(f"{name}: notification prefix filter {prefixes}, want [{TRIGGER_PREFIX!r}]")
            if not config.get("Event", "").startswith("s3:ObjectCreated:"):
                problems.append(f"{name}: notification on {config.get('Event')}")
            if config.get("Function") != {"Fn::GetAtt": ["SubmitFunction", "Arn"]}:
                problems.append(f"{name}: notification targets {config.get('Function')}")
            trigger_prefixes.extend(prefixes)
    if not trigger_prefixes:
        problems.append("no upload notification to submit")
    for prefix in trigger_prefixes:
        for written in SYSTEM_WRITE_PREFIXES:
            if prefix.startswith(written) or written.startswith(prefix):
                problems.append(f"trigger prefix {prefix!r} overlaps system prefix {written!r}")
        for owner, statement in allow_statements(cfn):
            # People upload to the inbox (that is what it is for); no function may.
            if owner in PEOPLE_POLICIES or not set(statement_actions(statement)) & S3_WRITE_ACTIONS:
                continue
            for resource in render(statement.get("Resource", [])):
                written = object_prefix(resource)
                if written is not None and (prefix.startswith(written) or written.startswith(prefix)):
                    problems.append(f"{owner}: writes {resource!r}, which triggers submit")
    return problems


def check_queues(cfn):
    problems = []
    queues = resources_of(cfn, "AWS::SQS::Queue")
    alarmed = {
        alarm["Properties"]["Dimensions"][0]["Value"].get("Fn::GetAtt", [None])[0]
        for alarm in resources_of(cfn, "AWS::CloudWatch::Alarm").values()
        if alarm["Properties"].get("MetricName") == "ApproximateNumberOfMessagesVisible"
        and alarm["Properties"].get("Threshold") == 0
        and alarm["Properties"].get("ComparisonOperator") == "GreaterThanThreshold"
    }
    mappings = resources_of(cfn, "AWS::Lambda::EventSourceMapping")
    if not mappings:
        problems.append("no SQS event source")
    for name, mapping in mappings.items():
        properties = mapping["Properties"]
        queue_name = getatt_target(properties["EventSourceArn"])
        function_name = properties["FunctionName"]["Ref"]
        queue = queues.get(queue_name, {}).get("Properties")
        if queue is None:
            problems.append(f"{name}: event source is not a queue of this stack")
            continue
        expected = EVENT_SOURCES.get(function_name)
        if expected is None:
            problems.append(f"{name}: {function_name} has no SQS event source to expect")
            continue
        timeout = cfn["Resources"][function_name]["Properties"].get("Timeout", 3)
        if queue.get("VisibilityTimeout", 30) < 6 * timeout:
            problems.append(f"{queue_name}: visibility timeout < 6 x {function_name} timeout {timeout}")
        if properties.get("BatchSize") != expected["batch_size"]:
            problems.append(f"{name}: batch size {properties.get('BatchSize')}, want {expected['batch_size']}")
        if "ReportBatchItemFailures" not in properties.get("FunctionResponseTypes", []):
            problems.append(f"{name}: no ReportBatchItemFailures")
        redrive = queue.get("RedrivePolicy", {})
        dead_letter = getatt_target(redrive.get("deadLetterTargetArn"))
        if dead_letter not in queues:
            problems.append(f"{queue_name}: no dead-letter queue")
            continue
        receives = redrive.get("maxReceiveCount")
        if not isinstance(receives, int) or not 2 <= receives <= 5:
            problems.append(f"{queue_name}: maxReceiveCount {receives}, want 2 to 5")
            continue
        # A message must be able to reach the dead-letter queue before it expires.
        if queue.get("MessageRetentionPeriod", 345600) < receives * queue.get("VisibilityTimeout", 30):
            problems.append(f"{queue_name}: messages expire before {receives} deliveries")
        consumer_env = (
            cfn["Resources"][function_name]["Properties"].get("Environment", {}).get("Variables", {})
        )
        receives_env = expected["max_receives_env"]
        if receives_env and consumer_env.get(receives_env) != str(receives):
            problems.append(f"{function_name}: {receives_env} differs from {queue_name}'s maxReceiveCount")
        dead_letter_retention = queues[dead_letter]["Properties"].get("MessageRetentionPeriod", 345600)
        if dead_letter_retention <= queue.get("MessageRetentionPeriod", 345600):
            problems.append(f"{dead_letter}: retention must outlast {queue_name}'s")
        if dead_letter not in alarmed:
            problems.append(f"{dead_letter}: no alarm on visible messages")
    return problems


def check_functions(sam, cfn):
    problems = []
    serverless = resources_of(sam, "AWS::Serverless::Function")
    if set(serverless) != set(FUNCTIONS):
        problems.append(f"functions {sorted(serverless)}, want {sorted(FUNCTIONS)}")
    code_uri = sam.get("Globals", {}).get("Function", {}).get("CodeUri")
    roles = {}
    for name, binary in FUNCTIONS.items():
        if name not in serverless:
            continue
        metadata = serverless[name].get("Metadata", {})
        if metadata.get("BuildMethod") != "rust-cargolambda":
            problems.append(f"{name}: BuildMethod {metadata.get('BuildMethod')}")
        if metadata.get("BuildProperties", {}).get("Binary") != binary:
            problems.append(f"{name}: builds {metadata.get('BuildProperties')}, want Binary {binary}")
        uri = serverless[name]["Properties"].get("CodeUri", code_uri)
        if not isinstance(uri, str) or (TEMPLATE_PATH.parent / uri).resolve() != ROOT:
            problems.append(f"{name}: CodeUri {uri!r} is not the workspace root")
        function = cfn["Resources"][name]["Properties"]
        expected = {"Runtime": "provided.al2023", "Architectures": ["arm64"], "Handler": "bootstrap"}
        for key, want in expected.items():
            if function.get(key) != want:
                problems.append(f"{name}: {key} {function.get(key)!r}, want {want!r}")
        missing = (COMMON_ENV | EXTRA_ENV[name]) - set(function.get("Environment", {}).get("Variables", {}))
        if missing:
            problems.append(f"{name}: environment lacks {sorted(missing)}")
        role = getatt_target(function.get("Role"))
        if cfn["Resources"].get(role, {}).get("Type") != "AWS::IAM::Role":
            problems.append(f"{name}: role {function.get('Role')} is not a role of this stack")
            continue
        if role in roles:
            problems.append(f"{name}: shares role {role} with {roles[role]}")
        roles[role] = name
        problems.extend(check_role(cfn, name, role, function))
    return problems


def check_role(cfn, function_name, role_name, function):
    problems = []
    trust = cfn["Resources"][role_name]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    principals = [as_list(s.get("Principal", {}).get("Service")) for s in as_list(trust)]
    if principals != [["lambda.amazonaws.com"]]:
        problems.append(f"{role_name}: trusted by {principals}, want lambda only")
    log_groups = resources_of(cfn, "AWS::Logs::LogGroup")
    log_targets = set()
    for statement in role_statements(cfn, role_name):
        actions = statement_actions(statement)
        if any(a.startswith("logs:") for a in actions):
            if set(actions) - {"logs:createlogstream", "logs:putlogevents"}:
                problems.append(f"{role_name}: log actions beyond writing streams {actions}")
            log_targets.update(getatt_target(r) for r in as_list(statement["Resource"]))
    want_group = "/aws/lambda/" + render(function.get("FunctionName", "<unnamed>"))[0]
    own = [
        name
        for name, group in log_groups.items()
        if render(group["Properties"].get("LogGroupName", ""))[0] == want_group
    ]
    if len(own) != 1 or log_targets != set(own):
        problems.append(
            f"{role_name}: may log to {sorted(map(str, log_targets))}, want its group {want_group}"
        )
    elif "RetentionInDays" not in log_groups[own[0]]["Properties"]:
        problems.append(f"{own[0]}: no retention")
    return problems


# Metrics the template must alarm on (threshold 0 over five minutes, summed over every
# pipeline and provider: the series without dimensions).
ALARMED_METRICS = ("JobsFailed", "JobsPastDeadline")


def strings_in(value):
    """Every string in a JSON value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings_in(item)


def check_monitoring(cfn):
    """Alarms on failed and late jobs, on metrics the code emits, notifying like the
    dead-letter alarms; a dashboard that shows every emitted metric and dead-letter queue."""
    problems = []
    declared = emf.declared_metrics()
    namespace = emf.declared_str("NAMESPACE")
    alarms = resources_of(cfn, "AWS::CloudWatch::Alarm")
    for name, alarm in alarms.items():
        properties = alarm["Properties"]
        if properties.get("Namespace") == namespace and properties.get("MetricName") not in declared:
            problems.append(f"{name}: alarms on {properties.get('MetricName')}, which the code does not emit")
        actions = properties.get("AlarmActions")
        if actions != {"Fn::If": ["HasAlarmTopic", [{"Ref": "AlarmTopicArn"}], {"Ref": "AWS::NoValue"}]}:
            problems.append(f"{name}: alarm actions {actions} do not notify the alarm topic")
    for metric in ALARMED_METRICS:
        watching = [
            name
            for name, alarm in alarms.items()
            if alarm["Properties"].get("Namespace") == namespace
            and alarm["Properties"].get("MetricName") == metric
            # The series without dimensions: every pipeline and provider.
            and not alarm["Properties"].get("Dimensions")
            and alarm["Properties"].get("Statistic") == "Sum"
            and alarm["Properties"].get("Period") == 300
            and alarm["Properties"].get("Threshold") == 0
            and alarm["Properties"].get("ComparisonOperator") == "GreaterThanThreshold"
            and alarm["Properties"].get("TreatMissingData") == "notBreaching"
        ]
        if not watching:
            problems.append(f"no alarm on {metric} > 0 over 5 minutes")
    dashboards = resources_of(cfn, "AWS::CloudWatch::Dashboard")
    if len(dashboards) != 1:
        return problems + [f"{len(dashboards)} dashboards, want 1"]
    ((name, dashboard),) = dashboards.items()
    (text,) = render(dashboard["Properties"]["DashboardBody"])
    try:
        body = json.loads(text)
    except ValueError as e:
        return problems + [f"{name}: the dashboard body is not JSON: {e}"]
    shown = set(strings_in(body))
    for metric in declared:
        if metric not in shown:
            problems.append(f"{name}: metric {metric} is not on the dashboard")
    for queue in resources_of(cfn, "AWS::SQS::Queue"):
        if queue.endswith("DeadLetterQueue") and "${%s.QueueName}" % queue not in shown:
            problems.append(f"{name}: dead-letter queue {queue} is not on the dashboard")
    return problems


def check_all(sam):
    cfn = sam_transform(sam)
    return (
        check_iam(cfn)
        + check_secret_access(cfn)
        + check_bucket(cfn)
        + check_notifications(cfn)
        + check_queues(cfn)
        + check_functions(sam, cfn)
        + check_monitoring(cfn)
    )


# ---------------------------------------------------------------- tests on the real template


@pytest.fixture(scope="module")
def template():
    return load_template()


def test_template_passes_every_check(template):
    assert check_all(template) == []


def test_the_metric_list_is_what_the_code_declares():
    """The checks read metrics.rs; make sure they read what the code emits."""
    declared = emf.declared_metrics()
    assert set(ALARMED_METRICS) <= set(declared)
    assert set(declared.values()) <= {"Count", "Seconds", "Milliseconds", "None"}
    assert declared["CostUSD"] == "None" and declared["ResultsLatency"] == "Seconds"
    assert emf.declared_str("NAMESPACE") == "batchline"


def test_each_function_gets_exactly_its_s3_access(template):
    """The statement of work, function by function (prefix -> actions)."""

    def s3_grants(role):
        grants = {}
        for statement in role_statements(template, role):
            for action in statement_actions(statement):
                if not action.startswith("s3:"):
                    continue
                for resource in render(statement["Resource"]):
                    key = object_prefix(resource) or resource
                    grants.setdefault(key, set()).add(action)
        return grants

    assert s3_grants("SubmitRole") == {
        # Unconditional, so that a missing key is a 404 and not a 403.
        BUCKET_ARN: {"s3:listbucket"},
        "inbox/": {"s3:getobject", "s3:getobjectversion"},
        "pipelines/": {"s3:getobject"},
        "jobs/": {"s3:getobject", "s3:putobject"},
        "results/": {"s3:getobject", "s3:putobject", "s3:abortmultipartupload"},
        "open/": {"s3:getobject", "s3:putobject", "s3:deleteobject"},
        # Bedrock jobs' input (with BedrockModelId set).
        "bedrock/input/": {"s3:putobject"},
    }
    assert s3_grants("PollRole") == {
        BUCKET_ARN: {"s3:listbucket"},
        "jobs/": {"s3:getobject", "s3:putobject"},
        "open/": {"s3:getobject", "s3:putobject", "s3:deleteobject"},
        "bedrock/input/": {"s3:putobject"},
    }
    assert s3_grants("CollectRole") == {
        "jobs/": {"s3:getobject", "s3:putobject", "s3:deleteobject"},
        "results/": {"s3:getobject", "s3:putobject", "s3:deleteobject", "s3:abortmultipartupload"},
        "open/": {"s3:getobject", "s3:putobject", "s3:deleteobject"},
        "bedrock/input/": {"s3:putobject"},
        "bedrock/output/": {"s3:getobject"},
    }
    (listing,) = [s for s in role_statements(template, "PollRole") if "s3:listbucket" in statement_actions(s)]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": "open/*"}}


def test_the_operator_policy_grants_what_the_cli_does_and_nothing_more(template):
    """The CLI's stack mode: read jobs and results, upload, request a cancel, find the bucket."""
    policy = template["Resources"]["OperatorPolicy"]
    assert policy["Type"] == "AWS::IAM::ManagedPolicy"
    grants = {}
    for statement in as_list(policy["Properties"]["PolicyDocument"]["Statement"]):
        assert statement["Effect"] == "Allow"
        for action in statement_actions(statement):
            for resource in render(statement["Resource"]):
                grants.setdefault(object_prefix(resource) or resource, set()).add(action)
    assert grants == {
        BUCKET_ARN: {"s3:listbucket"},
        "jobs/": {"s3:getobject", "s3:putobject"},
        "results/": {"s3:getobject"},
        "inbox/": {"s3:putobject", "s3:abortmultipartupload", "s3:getobject"},
        "${AWS::StackId}": {"cloudformation:describestacks"},
    }
    (listing,) = [s for s in as_list(policy["Properties"]["PolicyDocument"]["Statement"]) if s["Sid"] == "ListJobs"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": "jobs/*"}}
    # Attached to no function: it is for people.
    for role in resources_of(template, "AWS::IAM::Role").values():
        assert {"Ref": "OperatorPolicy"} not in role["Properties"].get("ManagedPolicyArns", [])
    assert template["Outputs"]["OperatorPolicyArn"]["Value"] == {"Ref": "OperatorPolicy"}


def test_queue_access_matches_roles(template):
    def sqs_grants(role):
        return {
            (action, getatt_target(resource))
            for statement in role_statements(template, role)
            for action in statement_actions(statement)
            if action.startswith("sqs:")
            for resource in as_list(statement["Resource"])
        }

    assert sqs_grants("PollRole") == {
        ("sqs:sendmessage", "ReadyQueue"),
        # The tick fans out to its own workers, which consume the queue.
        ("sqs:sendmessage", "PollJobsQueue"),
        ("sqs:receivemessage", "PollJobsQueue"),
        ("sqs:deletemessage", "PollJobsQueue"),
        ("sqs:getqueueattributes", "PollJobsQueue"),
        # A submit whose lease passed goes back to the submit function.
        ("sqs:sendmessage", "SubmitQueue"),
    }
    assert sqs_grants("CollectRole") == {
        ("sqs:receivemessage", "ReadyQueue"),
        ("sqs:deletemessage", "ReadyQueue"),
        ("sqs:getqueueattributes", "ReadyQueue"),
    }
    assert sqs_grants("SubmitRole") == {
        ("sqs:sendmessage", "SubmitDeadLetterQueue"),
        ("sqs:sendmessage", "SubmitQueue"),
        ("sqs:receivemessage", "SubmitQueue"),
        ("sqs:deletemessage", "SubmitQueue"),
        ("sqs:getqueueattributes", "SubmitQueue"),
    }


def test_ledger_access_is_read_for_submit_and_write_for_collect(template):
    """skip_succeeded: submit only looks rows up, collect only records them, poll neither."""

    def ledger_grants(role):
        return {
            (action, getatt_target(resource))
            for statement in role_statements(template, role)
            for action in statement_actions(statement)
            if action.startswith("dynamodb:")
            for resource in as_list(statement["Resource"])
        }

    assert ledger_grants("SubmitRole") == {("dynamodb:batchgetitem", "LedgerTable")}
    assert ledger_grants("CollectRole") == {("dynamodb:batchwriteitem", "LedgerTable")}
    assert ledger_grants("PollRole") == set()
    table = template["Resources"]["LedgerTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "row", "KeyType": "HASH"}]
    assert table["SSESpecification"] == {"SSEEnabled": True}


def test_no_secret_is_readable_when_none_is_configured(template):
    cfn = sam_transform(template)
    policy = cfn["Resources"]["ProviderSecretsReadPolicy"]
    assert policy["Condition"] == "HasAnySecret"
    for role in ("SubmitRole", "PollRole", "CollectRole"):
        attached = cfn["Resources"][role]["Properties"]["ManagedPolicyArns"]
        assert attached[0] == {
            "Fn::If": ["HasAnySecret", {"Ref": "ProviderSecretsReadPolicy"}, {"Ref": "AWS::NoValue"}]
        }


def test_bedrock_access_exists_only_when_configured_and_is_scoped(template):
    """The service role is Bedrock's alone, reads only job input, writes only job output and
    invokes only the configured model; the functions pass only that role, only to Bedrock."""
    conditional = ("BedrockServiceRole", "BedrockJobsPolicy", "BedrockOutputReadPolicy", "BedrockStopJobsPolicy")
    for name in conditional:
        assert template["Resources"][name]["Condition"] == "HasBedrock"
    assert template["Conditions"]["HasBedrock"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "BedrockModelId"}, ""]}]}
    assert template["Parameters"]["BedrockModelId"]["Default"] == ""

    role = template["Resources"]["BedrockServiceRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "bedrock.amazonaws.com"}
    assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    grants = {
        (action, resource)
        for statement in role_statements(template, "BedrockServiceRole")
        for action in statement_actions(statement)
        for resource in render(statement["Resource"])
    }
    assert grants == {
        ("s3:getobject", BUCKET_ARN + "/bedrock/input/*"),
        ("s3:putobject", BUCKET_ARN + "/bedrock/output/*"),
        ("s3:listbucket", BUCKET_ARN),
        ("bedrock:invokemodel", "arn:${AWS::Partition}:bedrock:${AWS::Region}::foundation-model/${BedrockModelId}"),
        (
            "bedrock:invokemodel",
            "arn:${AWS::Partition}:bedrock:${AWS::Region}:${AWS::AccountId}:inference-profile/${BedrockModelId}",
        ),
    }

    jobs = template["Resources"]["BedrockJobsPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    (pass_role,) = [s for s in jobs if "iam:passrole" in statement_actions(s)]
    assert getatt_target(pass_role["Resource"]) == "BedrockServiceRole"
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "bedrock.amazonaws.com"}}
    bedrock_actions = {a for s in jobs for a in statement_actions(s) if a.startswith("bedrock:")}
    assert bedrock_actions == {
        "bedrock:createmodelinvocationjob",
        "bedrock:getmodelinvocationjob",
        "bedrock:tagresource",
        "bedrock:listmodelinvocationjobs",
    }
    # Only poll stops jobs (a cancelled job's), and only batch jobs of this account.
    (stop,) = template["Resources"]["BedrockStopJobsPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement_actions(stop) == ["bedrock:stopmodelinvocationjob"]
    assert render(stop["Resource"]) == [BEDROCK_JOBS_ARN]
    attached = {
        role: [render(entry) for entry in template["Resources"][role]["Properties"]["ManagedPolicyArns"]]
        for role in FUNCTIONS_ROLES
    }
    for role, policies in attached.items():
        assert ["${BedrockJobsPolicy}"] in policies, role
        assert (["${BedrockOutputReadPolicy}"] in policies) == (role == "CollectRole"), role
        assert (["${BedrockStopJobsPolicy}"] in policies) == (role == "PollRole"), role


FUNCTIONS_ROLES = ("SubmitRole", "PollRole", "CollectRole")


def test_poll_runs_on_the_schedule_parameter(template):
    cfn = sam_transform(template)
    rules = resources_of(cfn, "AWS::Events::Rule")
    assert [r["Properties"]["ScheduleExpression"] for r in rules.values()] == [{"Ref": "PollSchedule"}]
    (rule,) = rules.values()
    assert [getatt_target(t["Arn"]) for t in rule["Properties"]["Targets"]] == ["PollFunction"]
    assert template["Parameters"]["PollSchedule"]["Default"] == "rate(5 minutes)"
    assert template["Parameters"]["LogRetentionInDays"]["Default"] == 30
    assert template["Parameters"]["PollConcurrency"]["Default"] == 8


def test_outputs_name_the_resources(template):
    outputs = {name: o["Value"] for name, o in template["Outputs"].items()}
    assert outputs["DataBucketName"] == {"Ref": "DataBucket"}
    assert outputs["ReadyQueueUrl"] == {"Ref": "ReadyQueue"}
    assert outputs["ReadyDeadLetterQueueUrl"] == {"Ref": "ReadyDeadLetterQueue"}
    assert outputs["PollJobsDeadLetterQueueUrl"] == {"Ref": "PollJobsDeadLetterQueue"}
    for function in FUNCTIONS:
        assert outputs[function + "Name"] == {"Ref": function}


def test_binaries_are_workspace_packages():
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    for binary in FUNCTIONS.values():
        assert f"functions/{binary}" in members
        package = tomllib.loads((ROOT / "functions" / binary / "Cargo.toml").read_text())["package"]
        assert package["name"] == binary


@pytest.mark.skipif(shutil.which("sam", path=str(ROOT / ".venv" / "bin")) is None, reason="sam not installed")
def test_sam_validate_lint_passes():
    environment = dict(os.environ, AWS_DEFAULT_REGION="us-east-1", SAM_CLI_TELEMETRY="0")
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "sam"), "validate", "--lint", "-t", str(TEMPLATE_PATH)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- the checks can fail


def statement(template, role, sid):
    document = template["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]
    return next(s for s in document["Statement"] if s.get("Sid") == sid)


def add_statement(role, new):
    def mutate(t):
        t["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"].append(new)

    return mutate


def set_in(path, value):
    def mutate(t):
        node = t
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def delete_in(path):
    def mutate(t):
        node = t
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


def bucket_object_arn(suffix):
    return {"Fn::Sub": f"arn:${{AWS::Partition}}:s3:::${{BucketName}}/{suffix}"}


BUCKET = ["Resources", "DataBucket", "Properties"]
SUBMIT = ["Resources", "SubmitFunction"]
INBOX_FILTER = SUBMIT + ["Properties", "Events", "InboxUpload", "Properties", "Filter", "S3Key", "Rules"]

MUTATIONS = {
    "wildcard action": (
        add_statement(
            "SubmitRole", {"Effect": "Allow", "Action": "s3:*", "Resource": bucket_object_arn("jobs/*")}
        ),
        "wildcard or malformed action",
    ),
    "partial wildcard action": (
        lambda t: statement(t, "PollRole", "ReadWriteJobState").__setitem__("Action", ["s3:Get*"]),
        "wildcard or malformed action",
    ),
    "star resource": (
        add_statement("CollectRole", {"Effect": "Allow", "Action": "sqs:SendMessage", "Resource": "*"}),
        "unscoped wildcard resource",
    ),
    "whole bucket objects": (
        lambda t: statement(t, "CollectRole", "ReadWriteJobStateAndResults")["Resource"].append(
            bucket_object_arn("*")
        ),
        "unscoped wildcard resource",
    ),
    "another bucket": (
        add_statement(
            "PollRole",
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::someone-else/jobs/x"},
        ),
        "outside this stack's bucket",
    ),
    "log wildcard": (
        lambda t: statement(t, "PollRole", "WriteOwnLogs").__setitem__(
            "Resource", {"Fn::Sub": "arn:${AWS::Partition}:logs:*:*:*"}
        ),
        "unscoped wildcard resource",
    ),
    "logs to another function's group": (
        lambda t: statement(t, "PollRole", "WriteOwnLogs").__setitem__(
            "Resource", {"Fn::GetAtt": ["CollectLogGroup", "Arn"]}
        ),
        "want its group",
    ),
    "AWS managed policy": (
        set_in(
            ["Resources", "CollectRole", "Properties", "ManagedPolicyArns"],
            ["arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"],
        ),
        "attaches a policy not defined here",
    ),
    "unconditional secret": (
        lambda t: t["Resources"]["ProviderSecretsReadPolicy"]["Properties"]["PolicyDocument"]["Statement"][0][
            "Resource"
        ].append({"Ref": "OpenAiApiKeySecretArn"}),
        "secret access not conditional",
    ),
    "no public access block": (delete_in(BUCKET + ["PublicAccessBlockConfiguration"]), "public access block"),
    "public ACLs allowed": (
        set_in(BUCKET + ["PublicAccessBlockConfiguration", "BlockPublicAcls"], False),
        "BlockPublicAcls",
    ),
    "no encryption": (delete_in(BUCKET + ["BucketEncryption"]), "encryption"),
    "no versioning": (delete_in(BUCKET + ["VersioningConfiguration"]), "versioning"),
    "no TLS-only policy": (delete_in(["Resources", "DataBucketPolicy"]), "SecureTransport"),
    "TLS policy on objects only": (
        lambda t: t["Resources"]["DataBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"][0][
            "Resource"
        ].pop(0),
        "SecureTransport",
    ),
    "trigger on everything": (
        delete_in(SUBMIT + ["Properties", "Events", "InboxUpload", "Properties", "Filter"]),
        "prefix filter",
    ),
    "trigger on jobs/": (
        set_in(INBOX_FILTER, [{"Name": "prefix", "Value": "jobs/"}]),
        "overlaps system prefix",
    ),
    "trigger on a parent of results/": (
        set_in(INBOX_FILTER, [{"Name": "prefix", "Value": "res"}]),
        "overlaps",
    ),
    "trigger on deletes": (
        set_in(
            SUBMIT + ["Properties", "Events", "InboxUpload", "Properties", "Events"], "s3:ObjectRemoved:*"
        ),
        "notification on",
    ),
    "system writes to inbox/": (
        lambda t: statement(t, "CollectRole", "ReadWriteJobStateAndResults")["Resource"].append(
            bucket_object_arn("inbox/*")
        ),
        "which triggers submit",
    ),
    "no dead-letter queue": (
        delete_in(["Resources", "ReadyQueue", "Properties", "RedrivePolicy"]),
        "no dead-letter queue",
    ),
    "dead-letter queue without alarm": (delete_in(["Resources", "ReadyDeadLetterAlarm"]), "no alarm"),
    "failed jobs without alarm": (delete_in(["Resources", "FailedJobsAlarm"]), "no alarm on JobsFailed"),
    "late jobs without alarm": (
        delete_in(["Resources", "JobsPastDeadlineAlarm"]),
        "no alarm on JobsPastDeadline",
    ),
    "alarm on one pipeline only": (
        set_in(
            ["Resources", "FailedJobsAlarm", "Properties", "Dimensions"],
            [{"Name": "Pipeline", "Value": "default"}],
        ),
        "no alarm on JobsFailed",
    ),
    "alarm on a metric nobody emits": (
        set_in(["Resources", "JobsPastDeadlineAlarm", "Properties", "MetricName"], "JobsLate"),
        "which the code does not emit",
    ),
    "alarm that notifies nobody": (
        delete_in(["Resources", "FailedJobsAlarm", "Properties", "AlarmActions"]),
        "do not notify",
    ),
    "no dashboard": (delete_in(["Resources", "OnCallDashboard"]), "0 dashboards"),
    "dashboard without a metric": (
        lambda t: t["Resources"]["OnCallDashboard"]["Properties"].update(
            DashboardBody={
                "Fn::Sub": t["Resources"]["OnCallDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"].replace(
                    '"PartsWaitingForQuota"', '"Other"'
                )
            }
        ),
        "PartsWaitingForQuota is not on the dashboard",
    ),
    "dashboard without a dead-letter queue": (
        lambda t: t["Resources"]["OnCallDashboard"]["Properties"].update(
            DashboardBody={
                "Fn::Sub": t["Resources"]["OnCallDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"].replace(
                    "${SubmitDeadLetterQueue.QueueName}", "other"
                )
            }
        ),
        "SubmitDeadLetterQueue is not on the dashboard",
    ),
    "short visibility timeout": (
        set_in(["Resources", "ReadyQueue", "Properties", "VisibilityTimeout"], 5399),
        "visibility timeout",
    ),
    "longer collect timeout": (
        set_in(["Resources", "CollectFunction", "Properties", "Timeout"], 901),
        "visibility timeout",
    ),
    "receive count out of step": (
        set_in(["Resources", "ReadyQueue", "Properties", "RedrivePolicy", "maxReceiveCount"], 3),
        "COLLECT_MAX_RECEIVES differs",
    ),
    "fan-out dead-letter queue without alarm": (
        delete_in(["Resources", "PollJobsDeadLetterAlarm"]),
        "PollJobsDeadLetterQueue: no alarm",
    ),
    "fan-out messages expire before the dead-letter queue": (
        set_in(["Resources", "PollJobsQueue", "Properties", "MessageRetentionPeriod"], 1800),
        "expire before",
    ),
    "longer poll timeout": (
        set_in(["Resources", "PollFunction", "Properties", "Timeout"], 121),
        "PollJobsQueue: visibility timeout",
    ),
    "poll workers one job a delivery": (
        set_in(
            ["Resources", "PollFunction", "Properties", "Events", "OpenJob", "Properties", "BatchSize"],
            1,
        ),
        "want 10",
    ),
    "bigger batches": (
        set_in(
            ["Resources", "CollectFunction", "Properties", "Events", "ReadyPart", "Properties", "BatchSize"],
            10,
        ),
        "batch size",
    ),
    "wrong runtime": (set_in(["Globals", "Function", "Runtime"], "provided.al2"), "Runtime"),
    "wrong architecture": (
        set_in(["Resources", "PollFunction", "Properties", "Architectures"], ["x86_64"]),
        "Architectures",
    ),
    "wrong build method": (set_in(SUBMIT + ["Metadata", "BuildMethod"], "makefile"), "BuildMethod"),
    "wrong binary": (
        set_in(SUBMIT + ["Metadata", "BuildProperties", "Binary"], "poll"),
        "want Binary submit",
    ),
    "wrong code location": (set_in(["Globals", "Function", "CodeUri"], "../functions"), "workspace root"),
    "missing environment": (
        delete_in(["Resources", "PollFunction", "Properties", "Environment", "Variables", "READY_QUEUE_URL"]),
        "environment lacks",
    ),
    "role of another stack": (
        set_in(["Resources", "PollFunction", "Properties", "Role"], "arn:aws:iam::123456789012:role/shared"),
        "not a role of this stack",
    ),
    "role trusted by another service": (
        set_in(
            [
                "Resources",
                "SubmitRole",
                "Properties",
                "AssumeRolePolicyDocument",
                "Statement",
                0,
                "Principal",
            ],
            {"Service": "ec2.amazonaws.com"},
        ),
        "want lambda only",
    ),
    "shared role": (
        set_in(["Resources", "PollFunction", "Properties", "Role"], {"Fn::GetAtt": ["CollectRole", "Arn"]}),
        "shares role",
    ),
    "SAM-generated role": (
        lambda t: t["Resources"]["PollFunction"]["Properties"].pop("Role"),
        "attaches a policy not defined here",
    ),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_checks_catch(template, mutation):
    mutate, expected = MUTATIONS[mutation]
    broken = copy.deepcopy(template)
    mutate(broken)
    problems = check_all(broken)
    assert any(expected in p for p in problems), problems


# ---------------------------------------------------------------- event fixtures

# Keys of the samples in the AWS Lambda and S3 documentation.
S3_RECORD_KEYS = {
    "eventVersion",
    "eventSource",
    "awsRegion",
    "eventTime",
    "eventName",
    "userIdentity",
    "requestParameters",
    "responseElements",
    "s3",
}
S3_OBJECT_KEYS = {"key", "size", "eTag", "versionId", "sequencer"}
SQS_RECORD_KEYS = {
    "messageId",
    "receiptHandle",
    "body",
    "attributes",
    "messageAttributes",
    "md5OfBody",
    "eventSource",
    "eventSourceARN",
    "awsRegion",
}
SCHEDULE_KEYS = {"version", "id", "detail-type", "source", "account", "time", "region", "resources", "detail"}


def read_event(name):
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


def parse_time(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_s3_put_event_is_an_inbox_upload():
    (record,) = read_event("s3-put.json")["Records"]
    assert set(record) == S3_RECORD_KEYS
    assert (record["eventSource"], record["eventName"]) == ("aws:s3", "ObjectCreated:Put")
    parse_time(record["eventTime"])
    assert set(record["responseElements"]) == {"x-amz-request-id", "x-amz-id-2"}
    entity = record["s3"]
    assert set(entity) == {"s3SchemaVersion", "configurationId", "bucket", "object"}
    assert entity["bucket"]["name"] == "batchline-local"
    assert entity["bucket"]["arn"] == "arn:aws:s3:::batchline-local"
    obj = entity["object"]
    assert set(obj) == S3_OBJECT_KEYS
    # S3 sends keys form-URL-encoded.
    assert obj["key"] == "inbox/demo/My%20Invoices+%C3%A9t%C3%A9.jsonl"
    assert unquote_plus(obj["key"]) == "inbox/demo/My Invoices été.jsonl"
    assert obj["key"].startswith(TRIGGER_PREFIX)
    assert isinstance(obj["size"], int) and obj["size"] > 0
    assert re.fullmatch(r"[0-9a-f]{32}", obj["eTag"])
    assert re.fullmatch(r"[0-9A-F]{16,}", obj["sequencer"])
    assert obj["versionId"]


def test_schedule_event_is_an_eventbridge_scheduled_event():
    event = read_event("schedule.json")
    assert set(event) == SCHEDULE_KEYS
    assert (event["detail-type"], event["source"], event["detail"]) == ("Scheduled Event", "aws.events", {})
    parse_time(event["time"])
    (rule,) = event["resources"]
    assert rule.startswith(f"arn:aws:events:{event['region']}:{event['account']}:rule/")


def test_sqs_event_carries_one_ready_part():
    (record,) = read_event("sqs-ready.json")["Records"]
    assert set(record) == SQS_RECORD_KEYS
    assert record["eventSource"] == "aws:sqs"
    assert record["md5OfBody"] == hashlib.md5(record["body"].encode()).hexdigest()
    body = json.loads(record["body"])
    assert set(body) == {"job_id", "part"} and body["part"] == 0 and body["job_id"]
    assert re.fullmatch(rf"arn:aws:sqs:{record['awsRegion']}:\d{{12}}:[\w-]+", record["eventSourceARN"])
    assert set(record["attributes"]) == {
        "ApproximateReceiveCount",
        "SentTimestamp",
        "SenderId",
        "ApproximateFirstReceiveTimestamp",
    }
