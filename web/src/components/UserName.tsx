interface Props {
  user: string;
  me: string;
  onOpenDm: (user: string) => void;
  className?: string;
}

/** A person's name; another person's opens the direct conversation with them. */
export function UserName({ user, me, onOpenDm, className = '' }: Props) {
  if (user === me) return <span className={className}>{user}</span>;
  return (
    <button type="button" className={`name-link ${className}`.trim()} title={`Direct message to ${user}`} onClick={() => onOpenDm(user)}>
      {user}
    </button>
  );
}
