//! The naming rule shared by clusters and regions: both appear in route tables, metric
//! labels, log lines and data paths, so both are short, lowercase and free of characters
//! that need quoting anywhere.

use crate::error::FieldError;
use crate::limits::MAX_CLUSTER_NAME_LEN;

/// Checks that `name`, the value of `field`, is 1..=[`MAX_CLUSTER_NAME_LEN`] characters of
/// `[a-z0-9-]`. `kind` is what the name names ("cluster", "region"), for the message;
/// `example` is a valid name of that kind to show.
pub(crate) fn check_name(
    field: &str,
    kind: &str,
    example: &str,
    name: &str,
) -> Result<(), FieldError> {
    let rule = format!(
        "a {kind} name is 1 to {MAX_CLUSTER_NAME_LEN} characters of lowercase letters, digits \
         and '-', such as \"{example}\""
    );
    let len = name.chars().count();
    if len == 0 || len > MAX_CLUSTER_NAME_LEN {
        return Err(FieldError::new(
            field,
            format!("\"{name}\" has {len} characters; {rule}"),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-'))
    {
        return Err(FieldError::new(
            field,
            format!("\"{name}\" contains {bad:?}; {rule}"),
        ));
    }
    Ok(())
}
