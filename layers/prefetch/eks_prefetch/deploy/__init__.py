"""What the stack's custom resources do at deploy and delete time: refuse a configuration the functions could not run
with (``config_check``), remove this application's pins on deletion (``unpin``), and answer CloudFormation
(``custom_resource``)."""
