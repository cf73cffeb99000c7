//! The size bounds `ec2.wit` promises, checked before a request is built.
//!
//! A guest controls every list and string it hands to the capability. EC2 would refuse most
//! oversized requests itself, but only after the host has encoded, signed and sent them,
//! and some (1000 filters of 1000 values) would cost real money in API throttling first.
//! So each request is measured here and refused with `CelletRequestTooLarge` without
//! reaching EC2.

use super::Ec2CallError;
use crate::plugins::bindings::ec2::Filter;
use crate::plugins::bindings::types::KeyValue;

/// Most ids, filters, filter values, tags or addresses in one list of a request.
pub const MAX_LIST_ITEMS: usize = 1000;
/// Longest string a request may carry, in bytes.
pub const MAX_STRING_BYTES: usize = 64 * 1024;
/// Longest user data before base64: EC2's own limit (16 KiB).
pub const MAX_USER_DATA_BYTES: usize = 16 * 1024;
/// Most items a Describe call returns; pagination stops there.
pub const MAX_RESULT_ITEMS: usize = 1000;

/// Measures the parts of one request; the first part over a bound fails the request.
pub(super) struct Bounds {
    operation: &'static str,
}

impl Bounds {
    pub(super) fn new(operation: &'static str) -> Self {
        Bounds { operation }
    }

    fn too_large(
        &self,
        field: String,
        size: usize,
        limit: usize,
        unit: &'static str,
    ) -> Ec2CallError {
        Ec2CallError::TooLarge {
            operation: self.operation,
            field,
            size,
            limit,
            unit,
        }
    }

    /// A string of at most [`MAX_STRING_BYTES`].
    pub(super) fn string(&self, field: &str, value: &str) -> Result<(), Ec2CallError> {
        self.string_within(field, value, MAX_STRING_BYTES)
    }

    /// A string of at most `limit` bytes.
    pub(super) fn string_within(
        &self,
        field: &str,
        value: &str,
        limit: usize,
    ) -> Result<(), Ec2CallError> {
        if value.len() > limit {
            return Err(self.too_large(field.to_owned(), value.len(), limit, "bytes"));
        }
        Ok(())
    }

    /// A list of at most [`MAX_LIST_ITEMS`] items.
    pub(super) fn list<T>(&self, field: &str, items: &[T]) -> Result<(), Ec2CallError> {
        if items.len() > MAX_LIST_ITEMS {
            return Err(self.too_large(field.to_owned(), items.len(), MAX_LIST_ITEMS, "items"));
        }
        Ok(())
    }

    /// A count of addresses for EC2 to choose: at most [`MAX_LIST_ITEMS`], like a list of
    /// given addresses, and as the `i32` the SDK takes.
    pub(super) fn count(&self, field: &str, count: u32) -> Result<i32, Ec2CallError> {
        i32::try_from(count)
            .ok()
            .filter(|n| *n as usize <= MAX_LIST_ITEMS)
            .ok_or_else(|| {
                self.too_large(
                    field.to_owned(),
                    count as usize,
                    MAX_LIST_ITEMS,
                    "addresses",
                )
            })
    }

    /// A list of strings, each bounded.
    pub(super) fn strings(&self, field: &str, items: &[String]) -> Result<(), Ec2CallError> {
        self.list(field, items)?;
        items
            .iter()
            .enumerate()
            .try_for_each(|(i, s)| self.string(&format!("{field}[{i}]"), s))
    }

    /// Tags: the list and every key and value.
    pub(super) fn tags(&self, field: &str, tags: &[KeyValue]) -> Result<(), Ec2CallError> {
        self.list(field, tags)?;
        tags.iter().enumerate().try_for_each(|(i, tag)| {
            self.string(&format!("{field}[{i}].key"), &tag.key)?;
            self.string(&format!("{field}[{i}].value"), &tag.value)
        })
    }

    /// Filters: the list, every name, and every list of values.
    pub(super) fn filters(&self, field: &str, filters: &[Filter]) -> Result<(), Ec2CallError> {
        self.list(field, filters)?;
        filters.iter().enumerate().try_for_each(|(i, filter)| {
            self.string(&format!("{field}[{i}].name"), &filter.name)?;
            self.strings(&format!("{field}[{i}].values"), &filter.values)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_and_message(result: Result<(), Ec2CallError>) -> (String, String) {
        let error = result.expect_err("the bound should refuse this");
        (error.code().to_owned(), error.to_string())
    }

    #[test]
    fn lists_at_the_limit_pass_and_one_more_fails_naming_the_field() {
        let bounds = Bounds::new("describe-instances");
        let ids = vec!["i-1".to_owned(); MAX_LIST_ITEMS];
        bounds.strings("instance-ids", &ids).unwrap();

        let ids = vec!["i-1".to_owned(); MAX_LIST_ITEMS + 1];
        let (code, message) = code_and_message(bounds.strings("instance-ids", &ids));
        assert_eq!(code, "CelletRequestTooLarge");
        assert!(message.contains("instance-ids"), "{message}");
        assert!(message.contains("1001"), "{message}");
        assert!(message.contains("describe-instances"), "{message}");
    }

    #[test]
    fn a_long_filter_value_is_named_by_its_path() {
        let bounds = Bounds::new("describe-subnets");
        let filters = vec![
            Filter {
                name: "vpc-id".into(),
                values: vec!["vpc-1".into()],
            },
            Filter {
                name: "tag:x".into(),
                values: vec!["ok".into(), "v".repeat(MAX_STRING_BYTES + 1)],
            },
        ];
        let (_, message) = code_and_message(bounds.filters("filters", &filters));
        assert!(message.contains("filters[1].values[1]"), "{message}");
    }

    #[test]
    fn tag_keys_and_values_are_bounded() {
        let bounds = Bounds::new("create-tags");
        let tags = vec![KeyValue {
            key: "k".repeat(MAX_STRING_BYTES + 1),
            value: String::new(),
        }];
        let (_, message) = code_and_message(bounds.tags("tags", &tags));
        assert!(message.contains("tags[0].key"), "{message}");
    }

    #[test]
    fn address_counts_are_bounded_like_lists() {
        let bounds = Bounds::new("assign-private-ip-addresses");
        assert_eq!(bounds.count("count", 1000).unwrap(), 1000);
        let (_, message) = code_and_message(bounds.count("count", u32::MAX).map(drop));
        assert!(message.contains("`count`"), "{message}");
    }

    #[test]
    fn user_data_has_its_own_smaller_limit() {
        let bounds = Bounds::new("run-instances");
        let data = "x".repeat(MAX_USER_DATA_BYTES);
        bounds
            .string_within("user-data", &data, MAX_USER_DATA_BYTES)
            .unwrap();
        let data = "x".repeat(MAX_USER_DATA_BYTES + 1);
        let (_, message) =
            code_and_message(bounds.string_within("user-data", &data, MAX_USER_DATA_BYTES));
        assert!(message.contains("16384"), "{message}");
    }
}
