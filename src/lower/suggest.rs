//! "Did you mean" hints: the nearest valid spelling of an unknown word.

/// The closest name within a small edit distance, for "did you mean" hints; ties go to
/// the first in alphabetical order.
pub fn closest<'a>(name: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(name, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| c)
}

/// A hint for an unknown word: the nearest valid spelling when one is close, then every
/// valid one: "did you mean `relu`? activations: `relu`, `prelu` or `gelu`".
pub fn suggest(name: &str, valid: &[&str], what: &str) -> String {
    let quoted: Vec<String> = valid.iter().map(|v| format!("`{v}`")).collect();
    let all = match quoted.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    };
    match closest(&name.to_ascii_lowercase(), valid) {
        Some(c) => format!("did you mean `{c}`? {what}: {all}"),
        None => format!("{what}: {all}"),
    }
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of
/// neighbours cost 1, so `conv_3x` is 1 from `conv3_x` (and 2 from `conv2_x`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between a[..i] and b[..j]; three rows suffice for the swap.
    let mut before: Vec<usize> = Vec::new();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let sub = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swapped_neighbours_are_one_edit() {
        assert_eq!(edit_distance("conv_3x", "conv3_x"), 1);
        assert_eq!(edit_distance("conv_3x", "conv2_x"), 2);
        assert_eq!(edit_distance("gleu", "gelu"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn the_nearest_name_wins_over_alphabetical_order() {
        let rows = ["conv1", "conv2_x", "conv3_x", "head"];
        assert_eq!(closest("conv_3x", &rows), Some("conv3_x"));
        assert_eq!(closest("conv_2x", &rows), Some("conv2_x"));
        assert_eq!(closest("fc", &rows), None);
    }

    #[test]
    fn suggestions_name_the_nearest_and_list_every_valid_spelling() {
        let acts = ["relu", "gelu", "tanh"];
        assert_eq!(
            suggest("Relu6", &acts, "activations"),
            "did you mean `relu`? activations: `relu`, `gelu` or `tanh`"
        );
        assert_eq!(
            suggest("swish", &acts, "activations"),
            "activations: `relu`, `gelu` or `tanh`"
        );
    }
}
